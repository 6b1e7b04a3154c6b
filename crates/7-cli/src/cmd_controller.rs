//! `flowshift controller` (the daemon), `flowshift migrate` / `flowshift status`, which talk
//! to a running controller's operator API, and `flowshift token`, which writes a token file.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use flowshift_control::api::{ClusterStatus, MigrateRequest};
use flowshift_control::orchestrator::{MigrationStatus, Stage};
use flowshift_controller::{ApiClient, ClusterConfig, Endpoint, Token};
use flowshift_lab::report::algorithm_name;
use flowshift_migration::{Algorithm, Params};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `--controller` points when neither it nor `FLOWSHIFT_CONTROLLER` is given and no
/// single testbed runs.
const DEFAULT_CONTROLLER: &str = "127.0.0.1:6780";
/// Where testbeds keep their state (`testbed-<run>/state.json`, field `api`).
const TESTBED_STATE_DIR: &str = "/run/flowshift";
/// How often `migrate --wait` polls.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

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

/// A client of the operator API as `args` and the environment select it.
fn api_client(args: &ApiArgs) -> Result<ApiClient> {
    let cfg = args
        .config
        .as_deref()
        .map(ClusterConfig::load)
        .transpose()?;
    let testbed = testbed_api(Path::new(TESTBED_STATE_DIR));
    let endpoint = match (&args.controller, &cfg) {
        (Some(flag), _) => flag
            .parse()
            .map_err(|e| anyhow::anyhow!("--controller: {e}"))?,
        (None, Some(cfg)) => cfg.api_listen.clone(),
        (None, None) => resolve_controller(None)?,
    };
    let env_token = std::env::var_os("FLOWSHIFT_TOKEN_FILE").filter(|v| !v.is_empty());
    let token_file = match (&args.token_file, &cfg, env_token) {
        (Some(f), _, _) => Some(f.clone()),
        (None, Some(cfg), _) => cfg.api_token_file.clone(),
        (None, None, Some(env)) => Some(PathBuf::from(env)),
        (None, None, None) => match testbed {
            Ok(Some(t)) if t.endpoint == endpoint => t.token_file,
            _ => None,
        },
    };
    let token = token_file.as_deref().map(Token::load).transpose()?;
    let client = ApiClient::new(endpoint.clone()).with_token(token);
    if matches!(endpoint, Endpoint::Unix(_)) {
        return Ok(client);
    }
    let env_tls = std::env::var_os("FLOWSHIFT_TLS_DIR").filter(|v| !v.is_empty());
    let tls_dir = args
        .tls_dir
        .clone()
        .or(env_tls.map(PathBuf::from))
        .or_else(|| Some(cfg.as_ref()?.tls.ca.parent()?.to_path_buf()));
    let Some(dir) = tls_dir else {
        bail!(
            "the API at {endpoint} is TCP, which admits only the operator's certificate: pass \
             --tls-dir DIR or set FLOWSHIFT_TLS_DIR (DIR holds ca.pem, operator.pem and \
             operator.key, from `flowshift pki init` or `flowshift pki issue --operator`)"
        );
    };
    let files =
        flowshift_trust::TlsFiles::in_dir(&dir, &flowshift_trust::pki::Party::Operator.stem());
    let creds = flowshift_trust::Credentials::load(&files).with_context(|| {
        format!(
            "loading the operator's TLS credentials from {}",
            dir.display()
        )
    })?;
    client.with_operator(&creds)
}

/// Asks the running controller to migrate a group; with `--wait`, follows it to the end.
pub fn migrate(args: &MigrateArgs) -> Result<()> {
    let client = api_client(&args.api)?;
    if args.abort || args.rehome {
        let answer = match args.to {
            Some(to) if args.rehome => client.rehome(args.group, to)?,
            _ => client.abort(args.group)?,
        };
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let (Some(to), Some(algorithm)) = (args.to, args.algorithm) else {
        anyhow::bail!("--to and --algorithm are required for a migration");
    };
    let params = args
        .params
        .as_deref()
        .map(|p| serde_json::from_str::<Params>(p).context("--params"))
        .transpose()?;
    let req = MigrateRequest {
        group: args.group,
        to,
        algorithm: algorithm.into(),
        params,
    };
    let resp = client.migrate(&req)?;
    let index = resp.index;
    if !args.wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&resp)?);
        } else {
            println!(
                "migration #{index} requested: {} from node {} to node {} ({})",
                args.group,
                resp.status.from,
                resp.status.to,
                algorithm_name(resp.status.algorithm)
            );
        }
        return Ok(());
    }
    let started = Instant::now();
    let mut last_stage = None;
    let status = loop {
        let all = client.migrations()?;
        let m = all
            .get(index)
            .cloned()
            .with_context(|| format!("the controller no longer lists migration #{index}"))?;
        if last_stage != Some(m.stage) && !args.json {
            eprintln!(
                "[{:7.1} s] migration #{index}: {}",
                started.elapsed().as_secs_f64(),
                m.stage.as_str()
            );
            last_stage = Some(m.stage);
        }
        if matches!(m.stage, Stage::Done | Stage::Aborted) {
            break m;
        }
        if started.elapsed() > Duration::from_secs(args.wait_timeout) {
            bail!(
                "migration #{index} still {} after {} s",
                m.stage.as_str(),
                args.wait_timeout
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let report = match status.migration {
        Some(_) => match client.report(index) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("warning: no report from the source node: {e}");
                None
            }
        },
        None => None,
    };
    if args.json {
        let out = serde_json::json!({ "index": index, "status": status, "report": report });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_summary(index, &status, report.as_ref());
    }
    if status.stage == Stage::Aborted {
        bail!("migration #{index} was aborted");
    }
    Ok(())
}

/// Prints the running controller's view of the cluster.
pub fn status(args: &StatusArgs) -> Result<()> {
    let client = api_client(&args.api)?;
    if args.counters {
        println!("{}", serde_json::to_string_pretty(&client.counters()?)?);
        return Ok(());
    }
    let s = client.status()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_status(&s);
    }
    Ok(())
}

/// The API endpoint: the flag, else `FLOWSHIFT_CONTROLLER`, else the single running
/// testbed's, else [`DEFAULT_CONTROLLER`].
fn resolve_controller(flag: Option<&str>) -> Result<Endpoint> {
    if let Some(f) = flag {
        return f.parse().map_err(|e| anyhow::anyhow!("--controller: {e}"));
    }
    if let Ok(v) = std::env::var("FLOWSHIFT_CONTROLLER")
        && !v.is_empty()
    {
        return v
            .parse()
            .map_err(|e| anyhow::anyhow!("FLOWSHIFT_CONTROLLER: {e}"));
    }
    if let Some(t) = testbed_api(Path::new(TESTBED_STATE_DIR))? {
        return Ok(t.endpoint);
    }
    DEFAULT_CONTROLLER
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A testbed's API: its endpoint and token file.
#[derive(Debug, PartialEq)]
struct TestbedApi {
    endpoint: Endpoint,
    token_file: Option<PathBuf>,
}

/// The `api` and `api_token_file` of the one `testbed-*/state.json` under `dir`, if exactly
/// one exists.
fn testbed_api(dir: &Path) -> Result<Option<TestbedApi>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let states: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("testbed-"))
        .map(|e| e.path().join("state.json"))
        .filter(|p| p.is_file())
        .collect();
    let state = match states.as_slice() {
        [] => return Ok(None),
        [one] => one,
        many => bail!(
            "several testbeds found ({}); choose one with --controller or FLOWSHIFT_CONTROLLER",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let text =
        std::fs::read_to_string(state).with_context(|| format!("reading {}", state.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", state.display()))?;
    let Some(api) = v.get("api").and_then(Value::as_str) else {
        return Ok(None);
    };
    let endpoint = if api.starts_with('/') {
        Endpoint::Unix(PathBuf::from(api))
    } else {
        api.parse()
            .map_err(|e| anyhow::anyhow!("{}: api: {e}", state.display()))?
    };
    let token_file = v
        .get("api_token_file")
        .and_then(Value::as_str)
        .map(PathBuf::from);
    Ok(Some(TestbedApi {
        endpoint,
        token_file,
    }))
}

/// Milliseconds from `from` to `to` (ns timestamps of the controller clock).
fn span_ms(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e6
}

fn print_summary(index: usize, m: &MigrationStatus, report: Option<&Value>) {
    println!(
        "migration #{index}: {} from node {} to node {} ({}): {}",
        m.external,
        m.from,
        m.to,
        algorithm_name(m.algorithm),
        m.stage.as_str()
    );
    let t0 = m.requested_at.as_nanos();
    let mut timeline = Vec::new();
    if let Some(t) = m.redirect_sent_at {
        timeline.push(format!("redirect sent {:.1} ms", span_ms(t0, t.as_nanos())));
    }
    if let Some(t) = m.redirect_confirmed_at {
        timeline.push(format!(
            "switch confirmed {:.1} ms",
            span_ms(t0, t.as_nanos())
        ));
    }
    if let Some(t) = m.finished_at {
        timeline.push(format!("finished {:.1} ms", span_ms(t0, t.as_nanos())));
    }
    if !timeline.is_empty() {
        println!("  controller: {} after the request", timeline.join(", "));
    }
    let Some(r) = report else { return };
    let num = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    if let Some(phases) = r.get("phases").and_then(Value::as_array) {
        let shown: Vec<String> = phases
            .iter()
            .map(|p| {
                let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
                let start = p.get("start_ms").and_then(Value::as_f64).unwrap_or(0.0);
                match p.get("end_ms").and_then(Value::as_f64) {
                    Some(end) => format!("{name} {:.1} ms", end - start),
                    None => format!("{name} (open)"),
                }
            })
            .collect();
        println!("  phases (source): {}", shown.join(", "));
    }
    println!(
        "  states: {} at start, {} transferred, {} expired while idle; {} records in {} batches",
        num("mappings_at_start"),
        num("states_transferred"),
        num("states_expired_idle"),
        num("records"),
        num("batches"),
    );
    println!(
        "  bytes: {:.0} sent, {:.0} received by the source",
        num("bytes_transferred"),
        num("bytes_received")
    );
    let lost = r
        .get("packets_lost_by_cause")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_u64().filter(|&n| n > 0).map(|n| (k.clone(), n)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let total: u64 = lost.iter().map(|(_, n)| n).sum();
    if lost.is_empty() {
        println!("  lost packets: 0");
    } else {
        let by: Vec<String> = lost.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("  lost packets: {total} ({})", by.join(", "));
    }
    println!(
        "  max freeze {:.2} ms, max buffer delay {:.2} ms, halted {:.2} ms; {} packets buffered, {} chained",
        num("max_freeze_ms"),
        num("max_buffer_delay_ms"),
        num("halted_ms"),
        num("packets_buffered"),
        num("packets_chained"),
    );
}

/// The elastic policy: node states and loads, what is in flight, the last decisions.
fn print_autoscale(a: &flowshift_control::autoscale::AutoscaleStatus) {
    let c = &a.counters;
    println!();
    println!(
        "autoscale {}: {} migrations ({} failed), {} scale-outs, {} scale-ins, {} unrelieved, {} rate-limited",
        if a.enabled { "on" } else { "off" },
        c.migrations,
        c.migrations_failed,
        c.scale_outs,
        c.scale_ins,
        c.overload_unrelieved,
        c.rate_limited
    );
    let nodes: Vec<String> = a
        .nodes
        .iter()
        .map(|(id, st, load)| format!("{id}:{}@{:.2}", json_name(serde_json::to_value(st)), load))
        .collect();
    println!("  nodes (state@load): {}", nodes.join(" "));
    if let Some(f) = &a.in_flight {
        println!("  in flight: {}", json_name(serde_json::to_value(f)));
    }
    for d in a.recent.iter().rev().take(5) {
        println!(
            "  {:>10.1} s {:<9} {}",
            d.at_ns as f64 / 1e9,
            json_name(serde_json::to_value(d.reason)),
            json_name(serde_json::to_value(&d.action))
        );
    }
}

/// A value's JSON form, unquoted (enum names, tagged actions).
fn json_name(v: serde_json::Result<serde_json::Value>) -> String {
    match v {
        Ok(serde_json::Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(e) => format!("({e})"),
    }
}

fn print_status(s: &ClusterStatus) {
    let switch = match s.switch_datapath_id {
        Some(dp) => format!(
            "switch {dp:#018x} connected, {} rules installed",
            s.switch_rules
        ),
        None => "switch not connected".to_owned(),
    };
    println!("controller up {:.1} s; {switch}", s.uptime_s);
    println!();
    println!("{:<16} {:<20} {:>5}", "GROUP", "SUBSCRIBERS", "OWNER");
    for g in &s.groups {
        println!("{:<16} {:<20} {:>5}", g.external, g.subscribers, g.owner);
    }
    println!();
    println!(
        "{:<5} {:<9} {:>9} {:>6} {:>9} {:>12} {:>12} {:>9} {:>9}",
        "NODE",
        "CONNECTED",
        "UPTIME_S",
        "GROUPS",
        "MAPPINGS",
        "RX_PACKETS",
        "TX_PACKETS",
        "DROPS",
        "MIG_LOSS"
    );
    for (id, n) in &s.nodes {
        let connected = if n.connected { "yes" } else { "no" };
        match &n.status {
            Some(st) => {
                let c = &st.counters;
                let mappings: u64 = st.groups.iter().map(|g| u64::from(g.mappings)).sum();
                println!(
                    "{:<5} {:<9} {:>9.1} {:>6} {:>9} {:>12} {:>12} {:>9} {:>9}",
                    id,
                    connected,
                    st.uptime_s,
                    st.groups.len(),
                    mappings,
                    c.io.rx_packets,
                    c.io.tx_packets,
                    c.total_drops(),
                    c.total_losses(),
                );
            }
            None => println!("{id:<5} {connected:<9} (no status yet)"),
        }
    }
    if let Some(a) = &s.autoscale {
        print_autoscale(a);
    }
    if s.migrations.is_empty() {
        println!();
        println!("no migrations");
        return;
    }
    println!();
    println!(
        "{:<4} {:<16} {:>4} {:>4} {:<11} {:<12} {:>18} {:>11}",
        "#", "GROUP", "FROM", "TO", "ALGORITHM", "STAGE", "ID", "ELAPSED_MS"
    );
    let now_ns = (s.uptime_s * 1e9) as u64;
    for (i, m) in s.migrations.iter().enumerate() {
        let end = m.finished_at.map_or(now_ns, |t| t.as_nanos());
        let id = m
            .migration
            .map_or_else(|| "-".to_owned(), |id| format!("{id:#x}"));
        println!(
            "{:<4} {:<16} {:>4} {:>4} {:<11} {:<12} {:>18} {:>11.1}",
            i,
            m.external,
            m.from,
            m.to,
            algorithm_name(m.algorithm),
            m.stage.as_str(),
            id,
            span_ms(m.requested_at.as_nanos(), end)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_testbed_state_names_the_api() {
        let dir = std::env::temp_dir().join(format!("fs-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(testbed_api(&dir).unwrap(), None, "no directory");
        std::fs::create_dir_all(dir.join("testbed-ab12")).unwrap();
        assert_eq!(testbed_api(&dir).unwrap(), None, "no state file");
        std::fs::write(
            dir.join("testbed-ab12/state.json"),
            r#"{"api": "unix:/run/flowshift/testbed-ab12/api.sock"}"#,
        )
        .unwrap();
        assert_eq!(
            testbed_api(&dir).unwrap(),
            Some(TestbedApi {
                endpoint: Endpoint::Unix("/run/flowshift/testbed-ab12/api.sock".into()),
                token_file: None,
            })
        );
        std::fs::write(
            dir.join("testbed-ab12/state.json"),
            r#"{"api": "/x/api.sock", "api_token_file": "/x/api.token"}"#,
        )
        .unwrap();
        assert_eq!(
            testbed_api(&dir).unwrap(),
            Some(TestbedApi {
                endpoint: Endpoint::Unix("/x/api.sock".into()),
                token_file: Some("/x/api.token".into()),
            })
        );
        std::fs::create_dir_all(dir.join("testbed-cd34")).unwrap();
        std::fs::write(dir.join("testbed-cd34/state.json"), "{}").unwrap();
        assert!(testbed_api(&dir).is_err(), "two testbeds: ambiguous");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_explicit_controller_wins() {
        assert_eq!(
            resolve_controller(Some("unix:/a.sock")).unwrap(),
            Endpoint::Unix("/a.sock".into())
        );
        assert!(resolve_controller(Some("nonsense")).is_err());
    }
}
