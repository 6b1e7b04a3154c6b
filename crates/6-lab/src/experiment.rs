//! `flowshift experiment fig1c` and `flowshift experiment scaling`: the poster's experiment on
//! the simulator (the real NAT core, migration engine and controller logic), reports as JSON,
//! SVG and PNG, and a table on stdout.

use crate::options::{AlgorithmChoice, Fig1cArgs};
use crate::plot::{self, Figure, Series};
use crate::report::{
    GoodputCurve, algorithm_name, goodput_min_bin_ratio, print_fig1c_table, rebin, round,
    write_goodput_plot, write_json,
};
use anyhow::{Context, Result, bail};
use clap::Args;
use flowshift_migration::{Algorithm, Phase};
use flowshift_sim::cluster::{self, ClusterConfig, ClusterRun};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Arguments of `experiment scaling`.
#[derive(Args, Debug)]
pub struct ScalingArgs {
    /// State counts to try.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,65000,100000,1000000"
    )]
    states: Vec<u32>,
    /// Algorithm(s).
    #[arg(long, value_enum, default_value = "all")]
    algorithm: AlgorithmChoice,
    /// Long-lived TCP flows during the migration.
    #[arg(long, default_value_t = 100)]
    flows: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory for scaling.json, scaling.svg and scaling.png.
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} simulated ms {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Runs the configurations, two at a time (one per core), keeping their order.
pub(crate) fn run_all(configs: Vec<ClusterConfig>, label: &str) -> Result<Vec<ClusterRun>> {
    let total: u64 = configs.iter().map(|c| c.duration.as_millis() as u64).sum();
    let pb = progress_bar(total, label);
    let done = Mutex::new(0u64);
    let results: Vec<Mutex<Option<Result<ClusterRun>>>> =
        configs.iter().map(|_| Mutex::new(None)).collect();
    let next = Mutex::new(0usize);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(cfg) = configs.get(i) else { break };
                    let mut last = 0u64;
                    let r = cluster::run(cfg, &mut |t| {
                        let now = (t * 1000.0) as u64;
                        let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
                        *d += now.saturating_sub(last);
                        last = now;
                        pb.set_position(*d);
                    })
                    .with_context(|| {
                        format!(
                            "{} with {} states",
                            algorithm_name(cfg.algorithm),
                            cfg.fictive_states
                        )
                    });
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    pb.finish_and_clear();
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| bail!("run did not finish"))
        })
        .collect()
}

/// The report object of one run (the fields `fig1c.json` promises, and more).
pub(crate) fn run_json(r: &ClusterRun) -> Value {
    let src = r.source.as_ref();
    let dst = r.destination.as_ref();
    let mut lost_by_cause: BTreeMap<&str, u64> = BTreeMap::new();
    for rep in [src, dst].into_iter().flatten() {
        for (k, v) in &rep.packets_lost_by_cause {
            *lost_by_cause.entry(k).or_default() += v;
        }
    }
    let lost: u64 = lost_by_cause.values().sum();
    let requested = r.controller.get("requested_ms").copied().unwrap_or(0.0);
    let done = r.controller.get("done_ms").copied();
    // The testbed's 100 ms bins, for comparability.
    let min_bin_ratio = goodput_min_bin_ratio(
        &rebin(&r.goodput, 100.0),
        100.0,
        requested / 2.0,
        requested,
        done.unwrap_or(requested),
    );
    let phases: Vec<Value> = src
        .map(|s| {
            s.phases
                .iter()
                .filter(|p| p.name != Phase::Done)
                .map(|p| json!({"name": p.name, "start_ms": round(p.start_ms, 3), "end_ms": p.end_ms.map(|e| round(e, 3))}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "algorithm": algorithm_name(r.config.algorithm),
        "seed": r.config.seed,
        "completed": src.is_some_and(|s| s.completed),
        "packets_lost": lost,
        "packets_lost_by_cause": lost_by_cause,
        "network_drops_by_cause": r.drops_by_cause,
        "packets_buffered": src.map_or(0, |s| s.packets_buffered) + dst.map_or(0, |d| d.packets_buffered),
        "packets_chained": src.map_or(0, |s| s.packets_chained),
        "reordered_packets": r.reordered_packets,
        "probes_sent": Value::Null,
        "probes_lost": Value::Null,
        "max_freeze_ms": round(src.map_or(0.0, |s| s.max_freeze_ms), 3),
        "halted_ms": round(src.map_or(0.0, |s| s.halted_ms), 3),
        "added_delay_ms_max": round(r.added_delay_ms_max, 3),
        "added_delay_ms_p99": round(r.added_delay_ms_p99, 3),
        "baseline_delay_ms": round(r.baseline_delay_ms, 3),
        "migration_ms": done.map(|d| round(d - requested, 3)),
        "phases": phases,
        "controller": r.controller,
        "states_at_start": src.map_or(0, |s| s.mappings_at_start),
        "states_expired_idle": src.map_or(0, |s| s.states_expired_idle),
        "states_transferred": src.map_or(0, |s| s.states_transferred),
        "records_transferred": src.map_or(0, |s| s.records),
        "bytes_transferred": src.map_or(0, |s| s.bytes_transferred),
        "batches": src.map_or(0, |s| s.batches),
        "precopy_rounds": src.map(|s| &s.precopy_rounds),
        "goodput_before_mbps": round(r.goodput_before_mbps, 1),
        "goodput_during_mbps": round(r.goodput_during_mbps, 1),
        "goodput_min_bin_ratio": min_bin_ratio,
        "goodput": r.goodput.iter().map(|&(t, m)| [round(t, 3), round(m, 2)]).collect::<Vec<_>>(),
        "invariants": {
            "ledger": r.invariants.ledger.as_ref().map(|_| "ok").unwrap_or_else(|e| e.as_str()),
            "nat_tables": r.invariants.nat_tables.as_ref().map(|_| "ok").unwrap_or_else(|e| e.as_str()),
            "single_owner": r.invariants.single_owner.as_ref().map(|_| "ok").unwrap_or_else(|e| e.as_str()),
        },
        "simulated_events": r.events,
    })
}

/// `experiment fig1c` on the simulator (`--testbed` is the CLI's to route to
/// [`crate::testbed::fig1c`]).
pub fn fig1c(args: &Fig1cArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.transfer_loss)
        || args.migrate_at <= 0.0
        || args.duration <= args.migrate_at
    {
        bail!("need 0 <= --transfer-loss < 1 and 0 < --migrate-at < --duration");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let configs: Vec<ClusterConfig> = args
        .algorithm
        .list()
        .into_iter()
        .map(|a| {
            let mut c = ClusterConfig::poster(a, args.seed);
            c.fictive_states = args.states;
            c.flows = args.flows;
            c.duration = Duration::from_secs_f64(args.duration);
            c.migrate_at = Duration::from_secs_f64(args.migrate_at);
            c.transfer_loss = args.transfer_loss;
            c
        })
        .collect();
    let runs = run_all(configs, "fig1c")?;
    let report = json!({
        "experiment": "fig1c",
        "backend": "simulator",
        "scenario": {
            "flows": args.flows, "states": args.states, "seed": args.seed,
            "bottleneck_mbps": 1000, "migrate_at_ms": args.migrate_at * 1e3, "duration_ms": args.duration * 1e3,
            "goodput_bin_ms": 10, "transfer_loss": args.transfer_loss,
        },
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
    });
    write_json(&args.out.join("fig1c.json"), &report)?;
    let labels: Vec<&str> = runs
        .iter()
        .map(|r| algorithm_name(r.config.algorithm))
        .collect();
    let phase_names: Vec<Vec<(String, f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.source
                .as_ref()
                .map(|s| {
                    s.phases
                        .iter()
                        .filter(|p| !matches!(p.name, Phase::Done | Phase::Prepare))
                        .map(|p| {
                            (
                                format!("{:?}", p.name).to_lowercase(),
                                p.start_ms,
                                p.end_ms.unwrap_or(p.start_ms),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let curves: Vec<GoodputCurve> = runs
        .iter()
        .zip(&labels)
        .zip(&phase_names)
        .map(|((r, l), ps)| GoodputCurve {
            label: l,
            points: &r.goodput,
            phases: ps,
        })
        .collect();
    write_goodput_plot(
        &format!(
            "Goodput of {} TCP flows during a migration of {} states (seed {})",
            args.flows, args.states, args.seed
        ),
        "goodput (Mbit/s, 10 ms bins)",
        &curves,
        &args.out.join("fig1c"),
    )?;
    print_fig1c_table(&report["runs"]);
    println!(
        "wrote {}/fig1c.json, fig1c.svg, fig1c.png",
        args.out.display()
    );
    let bad: Vec<&ClusterRun> = runs.iter().filter(|r| !r.invariants.ok()).collect();
    if !bad.is_empty() {
        bail!(
            "invariants failed (seed {}): {:?}",
            args.seed,
            bad.iter().map(|r| &r.invariants).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// `experiment scaling`.
pub fn scaling(args: &ScalingArgs) -> Result<()> {
    if args.states.is_empty() {
        bail!("--states needs at least one count");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let algs = args.algorithm.list();
    let mut configs = Vec::new();
    for &n in &args.states {
        for &a in &algs {
            let mut c = ClusterConfig::poster(a, args.seed);
            c.fictive_states = n;
            c.flows = args.flows;
            c.migrate_at = Duration::from_millis(600);
            // Long enough for the largest migration to finish and TCP to recover.
            let transfer_s = n as f64 * 30.0 * 8.0 / c.transfer_bps as f64;
            c.duration = c.migrate_at + Duration::from_secs_f64(1.4 + 3.0 * transfer_s);
            configs.push(c);
        }
    }
    let runs = run_all(configs, "scaling")?;
    let rows: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut v = run_json(r);
            if let Some(o) = v.as_object_mut() {
                o.remove("goodput");
                o.insert("states".into(), json!(r.config.fictive_states));
            }
            v
        })
        .collect();
    let report = json!({"experiment": "scaling", "backend": "simulator", "seed": args.seed, "flows": args.flows, "runs": rows});
    write_json(&args.out.join("scaling.json"), &report)?;
    println!(
        "{:>9} {:<12} {:>10} {:>10} {:>7} {:>12} {:>11} {:>10}",
        "states",
        "algorithm",
        "freeze_ms",
        "halted_ms",
        "lost",
        "migration_ms",
        "transferred",
        "bytes"
    );
    for r in &rows {
        println!(
            "{:>9} {:<12} {:>10.2} {:>10.2} {:>7} {:>12.1} {:>11} {:>10}",
            r["states"].as_u64().unwrap_or(0),
            r["algorithm"].as_str().unwrap_or("?"),
            r["max_freeze_ms"].as_f64().unwrap_or(0.0),
            r["halted_ms"].as_f64().unwrap_or(0.0),
            r["packets_lost"].as_u64().unwrap_or(0),
            r["migration_ms"].as_f64().unwrap_or(f64::NAN),
            r["states_transferred"].as_u64().unwrap_or(0),
            r["bytes_transferred"].as_u64().unwrap_or(0),
        );
    }
    // Plot: longest per-flow freeze (freeze-copy) or downtime (stop-copy, pre-copy's last
    // round) against state count, log scale.
    let mut series_pts: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for &a in &algs {
        let pts = rows
            .iter()
            .filter(|r| r["algorithm"] == algorithm_name(a))
            .map(|r| {
                let v = if a == Algorithm::FreezeCopy {
                    r["max_freeze_ms"].as_f64()
                } else {
                    r["halted_ms"].as_f64()
                };
                (
                    r["states"].as_f64().unwrap_or(0.0),
                    v.unwrap_or(0.0).max(1e-3),
                )
            })
            .collect();
        let label = if a == Algorithm::FreezeCopy {
            "freeze-copy: longest freeze"
        } else if a == Algorithm::StopCopy {
            "stop-copy: downtime"
        } else {
            "pre-copy: final downtime"
        };
        series_pts.push((label.to_string(), pts));
    }
    let fig = Figure {
        title: "Cost of a migration versus state count",
        x_label: "states (log scale)",
        y_label: "ms (log scale)",
        series: series_pts
            .iter()
            .map(|(l, p)| Series {
                label: l,
                points: p,
            })
            .collect(),
        spans: Vec::new(),
        log_y: true,
        log_x: true,
    };
    plot::write(&fig, &args.out.join("scaling"))?;
    println!(
        "wrote {}/scaling.json, scaling.svg, scaling.png",
        args.out.display()
    );
    Ok(())
}
