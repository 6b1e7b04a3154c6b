//! `flowshift experiment fig1c --testbed`: the poster's experiment on real packets.
//!
//! Per algorithm, on a fresh testbed (2 nodes, `--states` pre-loaded on group 198.18.0.1 of
//! node 1, plain userspace datapath, about 1 Gbit/s):
//!
//! 1. the server link shaped to `--link-rate` (default 1 Gbit/s, [`layout::Shaping`]: the
//!    fixed bottleneck); one iperf3 server per port in the server namespace; `--flows` TCP
//!    flows from the subscriber namespace in clients of at most 25 streams, each from its own
//!    subscriber address of the group, with 100 ms JSON intervals; a sequence-numbered UDP
//!    probe stream (`--probe-rate`, default 1000/s, [`probe`]) from a subscriber address of
//!    the group to an echo on the server side: loss, reordering and added round-trip time as
//!    a subscriber sees them; a 100 Hz ping (ICMP through the same group) for comparison;
//! 2. at `--migrate-at` the group moves to node 2 through the controller's API (`POST
//!    /migrate`, then `GET /migrations` until done);
//! 3. collected: goodput per 100 ms from the servers' (receivers') intervals, retransmissions
//!    from the clients, the probe stream's record, CPU of both node processes and
//!    `ovs-vswitchd` over the clients' run (`/proc/<pid>/stat`), the shaper's queue drops,
//!    node counters before and after (drops by reason, migration losses),
//!    the source's report (`GET /migrations/<i>/report`: phases, freeze times, bytes), the
//!    switch's flow and port counters (`GET /switch`, from OpenFlow statistics);
//! 4. the testbed is removed.
//!
//! Times in the report are milliseconds since the clients started. The controller's milestones
//! (controller clock) are aligned by its `requested_at`; the source's phase times (node clock)
//! by taking its `done` as the controller's done (the source's `Completed` is one control hop;
//! `clock_alignment` says which anchor a run used). The probe stream and
//! ping use the wall clock (`CLOCK_REALTIME`, one machine), aligned at the clients' start.
//! `timeline` lists every milestone in ms after the request.

use super::bed::Testbed;
use super::exp_measure::*;
use super::iperf;
use super::layout;
use super::probe;
use super::sys;
use crate::options::Fig1cArgs;
use crate::report::{algorithm_name, print_fig1c_table};
use anyhow::{Context, Result, bail};
use flowshift_control::api::{ClusterStatus, MigrateRequest};
use flowshift_control::orchestrator::{MigrationStatus, Stage};
use flowshift_controller::ApiClient;
use flowshift_migration::{Algorithm, Params};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

mod analyse;
mod run;
#[cfg(test)]
mod tests;

/// Streams per iperf3 client (one client per subscriber address).
const STREAMS_PER_CLIENT: usize = 25;
/// Ping interval.
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Testbed defaults when the simulator's defaults (3 s, migration at 1 s) are left alone.
const TESTBED_DURATION_S: f64 = 10.0;
const TESTBED_MIGRATE_AT_S: f64 = 4.0;

/// The migration parameters: the simulator's poster scenario (`ClusterConfig::poster`), with
/// the default 50 ms drain (real switch and socket delays instead of simulated ones).
pub fn params(a: Algorithm) -> Params {
    let mut p = Params {
        batch_size: 512,
        batch_max_bytes: 60 << 10,
        idle_sample_interval: Duration::from_millis(50),
        idle_window_samples: 4,
        idle_max: Duration::from_millis(500),
        ..Params::default()
    };
    if a != Algorithm::FreezeCopy {
        p.batches_in_flight = 8;
    }
    p
}

/// `experiment fig1c --testbed`.
pub fn fig1c(args: &Fig1cArgs) -> Result<()> {
    super::bed::require_root("`flowshift experiment fig1c --testbed`")?;
    sys::catch_interrupts();
    let (duration, migrate_at) = if args.duration == 3.0 && args.migrate_at == 1.0 {
        eprintln!(
            "fig1c on the testbed: {TESTBED_DURATION_S} s per algorithm, migration at {TESTBED_MIGRATE_AT_S} s (set --duration and --migrate-at to change)"
        );
        (TESTBED_DURATION_S, TESTBED_MIGRATE_AT_S)
    } else {
        (args.duration, args.migrate_at)
    };
    if !(0.0..1.0).contains(&args.transfer_loss)
        || migrate_at <= 0.0
        || duration <= migrate_at
        || duration > 600.0
    {
        bail!("need 0 <= --transfer-loss < 1 and 0 < --migrate-at < --duration <= 600");
    }
    let max_flows =
        iperf::MAX_STREAMS.min(STREAMS_PER_CLIENT) * usize::from(layout::SUBSCRIBER_HOSTS - 1);
    if args.flows == 0 || args.flows > max_flows {
        bail!("--flows must be 1..={max_flows} on the testbed");
    }
    if !(0.0..=1000.0).contains(&args.chain_quiet_ms) {
        bail!("--chain-quiet-ms must be 0..=1000");
    }
    if args.probe_rate == 0 || args.probe_rate > 20_000 {
        bail!("--probe-rate must be 1..=20000 per second");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let algorithms = args.algorithm.list();
    let mut runs = Vec::new();
    for &a in &algorithms {
        eprintln!("fig1c on the testbed: {} ...", algorithm_name(a));
        let r = run::run_one(args, a, duration, migrate_at)
            .with_context(|| format!("{} on the testbed", algorithm_name(a)))?;
        runs.push(r);
    }
    let report = json!({
        "experiment": "fig1c",
        "backend": "testbed",
        "scenario": {
            "flows": args.flows, "states": args.states, "seed": args.seed,
            "migrate_at_ms": migrate_at * 1e3, "duration_ms": duration * 1e3,
            "goodput_bin_ms": iperf::INTERVAL_S * 1e3, "transfer_loss": args.transfer_loss,
            "nodes": 2, "switch": "Open vSwitch userspace datapath (netdev)",
            "offload": match args.offload {
                super::Offload::Off => "off",
                super::Offload::Tso => "tso",
            },
            "link_rate_bps": args.link_rate.0,
            "bottleneck": match args.link_rate.0 {
                Some(_) => "the server link, shaped with HTB in both directions (runs[].link)",
                None => "none fixed (--link-rate off): the switch's packet rate",
            },
            "probe_rate_per_s": args.probe_rate,
            "clients": args.flows.div_ceil(STREAMS_PER_CLIENT),
            "params": runs.first().map(|r: &RunOut| r.params.clone()),
            "algorithms": algorithms.iter().map(|&a| algorithm_name(a)).collect::<Vec<_>>(),
            "time_origin": "start of the iperf3 clients",
            "delay": "UDP probe round-trip time minus its median in the second before the migration; p99 and max over the probes sent from the migration's start to the end of the run",
        },
        "runs": runs.iter().map(|r| r.json.clone()).collect::<Vec<_>>(),
    });
    let path = args.out.join("fig1c.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    plot_runs(args, &runs)?;
    print_fig1c_table(&report["runs"]);
    println!(
        "  testbed: server link {}; probe stream {}/s from {} to {}:{}",
        match args.link_rate.0 {
            Some(_) => format!("shaped to {}", args.link_rate),
            None => "not shaped".into(),
        },
        args.probe_rate,
        layout::subscriber(1, layout::SUBSCRIBER_HOSTS),
        layout::SERVERS[1],
        layout::PROBE_PORT
    );
    println!("timeline (ms after the request):");
    for r in &runs {
        println!(
            "  {:<12} {}",
            r.json["algorithm"].as_str().unwrap_or("?"),
            timeline_line(&r.json["timeline"])
        );
    }
    println!(
        "wrote {}/fig1c.json, fig1c.svg, fig1c.png, fig1c-delay.svg, fig1c-delay.png (backend: testbed)",
        args.out.display()
    );
    let bad: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let inv = r.json["invariants"].as_object()?;
            let failed: Vec<String> = inv
                .iter()
                .filter(|(_, v)| v.as_str() != Some("ok"))
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?")))
                .collect();
            (!failed.is_empty()).then(|| {
                format!(
                    "{}: {}",
                    r.json["algorithm"].as_str().unwrap_or("?"),
                    failed.join(", ")
                )
            })
        })
        .collect();
    if !bad.is_empty() {
        bail!("checks failed: {}", bad.join("; "));
    }
    Ok(())
}

/// One algorithm's results.
pub(super) struct RunOut {
    pub(super) json: Value,
    pub(super) goodput: Vec<(f64, f64)>,
    /// Probe round trips around the migration: (send ms, RTT ms).
    pub(super) rtt: Vec<(f64, f64)>,
    pub(super) phases: Vec<(String, f64, f64)>,
    pub(super) params: Value,
}

/// Starts the migration `req` through the controller's API and polls it (every 10 ms) until it
/// is done or aborted: its index and last status. Fails at `deadline` or when a process of the
/// run exits.
pub(super) fn migrate_and_wait(
    tb: &Testbed,
    api: &ApiClient,
    req: &MigrateRequest,
    deadline: Instant,
) -> Result<(usize, MigrationStatus)> {
    let index = api.migrate(req).context("POST /migrate")?.index;
    loop {
        let m = api
            .migrations()?
            .get(index)
            .cloned()
            .with_context(|| format!("migration #{index} not listed"))?;
        if matches!(m.stage, Stage::Done | Stage::Aborted) {
            return Ok((index, m));
        }
        if Instant::now() > deadline {
            bail!("migration #{index} still {:?} at its deadline", m.stage);
        }
        tb.check_processes()?;
        sys::sleep(Duration::from_millis(10))?;
    }
}

/// Waits for the probe sender to finish (by `deadline`), stops the echo, reads the sender's
/// record, and then the cluster's status once the nodes' last counters have arrived (node
/// statuses reach the controller every 500 ms).
pub(super) fn end_probes(
    prober: &mut probe::ProbeProcess,
    echo: &mut probe::ProbeProcess,
    api: &ApiClient,
    deadline: Instant,
) -> Result<(probe::ProbeRecord, ClusterStatus)> {
    prober.finish(deadline).context("the probe stream")?;
    drop(echo.finish(Instant::now()));
    let rec = probe::read_record(&prober.out)?;
    sys::sleep(Duration::from_millis(1300))?;
    Ok((rec, api.status()?))
}
