//! `flowshift experiment fig1c` and `flowshift experiment scaling`: the poster's experiment on
//! the simulator (the real NAT core, migration engine and controller logic), reports as JSON,
//! SVG and PNG, and a table on stdout.

use crate::plot::{self, Figure, Series, Span};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use flowshift_migration::{Algorithm, Phase};
use flowshift_sim::cluster::{self, ClusterConfig, ClusterRun};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Which algorithms to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmChoice {
    /// Idle phase, then iterated freeze-and-copy (the poster's).
    FreezeCopy,
    /// Stop, copy everything, redirect (baseline).
    StopCopy,
    /// Copy rounds while serving, then a final stop-and-copy (baseline).
    PreCopy,
    /// All three.
    All,
}

impl AlgorithmChoice {
    pub fn list(self) -> Vec<Algorithm> {
        match self {
            AlgorithmChoice::FreezeCopy => vec![Algorithm::FreezeCopy],
            AlgorithmChoice::StopCopy => vec![Algorithm::StopCopy],
            AlgorithmChoice::PreCopy => vec![Algorithm::PreCopy],
            AlgorithmChoice::All => vec![
                Algorithm::FreezeCopy,
                Algorithm::StopCopy,
                Algorithm::PreCopy,
            ],
        }
    }
}

/// Name used in reports.
pub fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::FreezeCopy => "freeze-copy",
        Algorithm::StopCopy => "stop-copy",
        Algorithm::PreCopy => "pre-copy",
    }
}

/// Arguments of `experiment fig1c`.
#[derive(Args, Debug)]
pub struct Fig1cArgs {
    /// Algorithm(s) to run, each on the same scenario and seed.
    #[arg(long, value_enum, default_value = "all")]
    pub algorithm: AlgorithmChoice,
    /// Fictive long-lived states pre-loaded on the source (24 bytes each).
    #[arg(long, default_value_t = 65_000)]
    pub states: u32,
    /// Long-lived TCP flows saturating the bottleneck.
    #[arg(long, default_value_t = 100)]
    pub flows: usize,
    /// Seed (decides every random choice; same seed, same report).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory for fig1c.json, fig1c.svg and fig1c.png.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Simulated seconds per run.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// When the migration starts (simulated seconds).
    #[arg(long, default_value_t = 1.0)]
    pub migrate_at: f64,
    /// Random loss on the state-transfer link (fault injection, 0..1).
    #[arg(long, default_value_t = 0.0)]
    pub transfer_loss: f64,
    /// Run on the one-machine testbed (root: namespaces, Open vSwitch, real nodes, iperf3)
    /// instead of the simulator.
    #[arg(long)]
    pub testbed: bool,
    /// Testbed: rate of the shaped server link (the bottleneck): `1gbit`, `500mbit`, ..., or
    /// `off`. The simulator's bottleneck is always 1 Gbit/s.
    #[arg(long, default_value = "1gbit")]
    pub link_rate: crate::testbed::LinkRate,
    /// Testbed: UDP probes per second from a subscriber of the migrated group to an echo on
    /// the server side (loss, reordering, added delay as a subscriber sees them).
    #[arg(long, default_value_t = 1000)]
    pub probe_rate: u32,
    /// Testbed: switch and veth offloads. `off` (the default): plain userspace datapath, whose
    /// single thread tops out near the link rate on 2 cores (the queue then builds in the
    /// switch, not at the shaped link); `tso`: GSO frames pass the switch and nodes, so the
    /// shaped link is the bottleneck.
    #[arg(long, value_enum, default_value = "off")]
    pub offload: crate::testbed::Offload,
}

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
fn run_all(configs: Vec<ClusterConfig>, label: &str) -> Result<Vec<ClusterRun>> {
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

fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

/// Re-bins (bin start ms, Mbit/s) goodput into bins of `bin_ms` aligned to multiples of it
/// (the mean of the fine bins each holds; fine bins must divide `bin_ms`).
pub(crate) fn rebin(bins: &[(f64, f64)], bin_ms: f64) -> Vec<(f64, f64)> {
    let mut out: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for &(t, v) in bins {
        let e = out.entry((t / bin_ms + 1e-9).floor() as i64).or_default();
        e.0 += v;
        e.1 += 1;
    }
    out.into_iter()
        .map(|(k, (sum, n))| (k as f64 * bin_ms, sum / n as f64))
        .collect()
}

/// The lowest goodput bin during a migration divided by the median bin before it: bins
/// (start ms, Mbit/s) of width `bin_ms`; "during" is every bin overlapping `[from_ms, to_ms +
/// bin_ms]` (request to done, plus one bin); "before" every bin starting at or after
/// `base_from_ms` and ending by `from_ms`. `None` without a baseline.
pub(crate) fn goodput_min_bin_ratio(
    bins: &[(f64, f64)],
    bin_ms: f64,
    base_from_ms: f64,
    from_ms: f64,
    to_ms: f64,
) -> Option<f64> {
    let mut base: Vec<f64> = bins
        .iter()
        .filter(|(t, _)| *t >= base_from_ms && *t + bin_ms <= from_ms + 1e-9)
        .map(|(_, v)| *v)
        .collect();
    base.sort_by(f64::total_cmp);
    let median = match base.len() {
        0 => return None,
        n if n % 2 == 1 => base[n / 2],
        n => (base[n / 2 - 1] + base[n / 2]) / 2.0,
    };
    let min = bins
        .iter()
        .filter(|(t, _)| *t + bin_ms > from_ms && *t <= to_ms + bin_ms)
        .map(|(_, v)| *v)
        .min_by(f64::total_cmp)?;
    (median > 0.0).then(|| round(min / median, 3))
}

/// The report object of one run (the fields `fig1c.json` promises, and more).
fn run_json(r: &ClusterRun) -> Value {
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

fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// `experiment fig1c`.
pub fn fig1c(args: &Fig1cArgs) -> Result<()> {
    if args.testbed {
        return crate::testbed::fig1c(args);
    }
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

/// One algorithm's goodput curve and phases for [`write_goodput_plot`].
pub(crate) struct GoodputCurve<'a> {
    /// Legend label.
    pub label: &'a str,
    /// (ms, Mbit/s).
    pub points: &'a [(f64, f64)],
    /// (phase name, start ms, end ms), shaded in the curve's colour.
    pub phases: &'a [(String, f64, f64)],
}

/// Writes the fig1c goodput plot (SVG and PNG at `path` with the extensions added).
pub(crate) fn write_goodput_plot(
    title: &str,
    y_label: &str,
    curves: &[GoodputCurve],
    path: &std::path::Path,
) -> Result<()> {
    let fig = Figure {
        title,
        x_label: "time (ms)",
        y_label,
        series: curves
            .iter()
            .map(|c| Series {
                label: c.label,
                points: c.points,
            })
            .collect(),
        spans: curves
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.phases.iter().map(move |(n, s, e)| Span {
                    label: n,
                    start: *s,
                    end: *e,
                    series: i,
                })
            })
            .collect(),
        log_y: false,
        log_x: false,
    };
    plot::write(&fig, path)
}

/// Prints the fig1c table of `runs` (the `runs` array of `fig1c.json`, simulator or
/// testbed); a field a back end does not have prints as `-`.
pub(crate) fn print_fig1c_table(runs: &Value) {
    println!(
        "{:<12} {:>6} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>11} {:>9} {:>6} {:>6} {:>7} {:>15}",
        "algorithm",
        "lost",
        "p_lost",
        "reorder",
        "buffered",
        "retrans",
        "freeze_ms",
        "halted_ms",
        "dly_p99",
        "dly_max",
        "mig_ms",
        "expired",
        "transferred",
        "bytes",
        "Mb/s<",
        "Mb/s~",
        "min_bin",
        "cpu% n1/n2/ovs"
    );
    let int = |v: &Value| v.as_u64().map_or("-".to_owned(), |x| x.to_string());
    let num = |v: &Value, d: usize| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.d$}"));
    for r in runs.as_array().into_iter().flatten() {
        let c = &r["cpu_pct"];
        let cpu = if c.is_object() {
            format!(
                "{}/{}/{}",
                num(&c["node1"], 0),
                num(&c["node2"], 0),
                num(&c["ovs_vswitchd"], 0)
            )
        } else {
            "-".to_owned()
        };
        println!(
            "{:<12} {:>6} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>11} {:>9} {:>6} {:>6} {:>7} {:>15}",
            r["algorithm"].as_str().unwrap_or("?"),
            int(&r["packets_lost"]),
            int(&r["probes_lost"]),
            int(&r["reordered_packets"]),
            int(&r["packets_buffered"]),
            int(&r["retransmits"]),
            num(&r["max_freeze_ms"], 2),
            num(&r["halted_ms"], 2),
            num(&r["added_delay_ms_p99"], 2),
            num(&r["added_delay_ms_max"], 2),
            num(&r["migration_ms"], 1),
            int(&r["states_expired_idle"]),
            int(&r["states_transferred"]),
            int(&r["bytes_transferred"]),
            num(&r["goodput_before_mbps"], 0),
            num(&r["goodput_during_mbps"], 0),
            num(&r["goodput_min_bin_ratio"], 3),
            cpu,
        );
    }
    println!(
        "  lost: packets the NAT nodes lost to the migration; p_lost, reorder, dly_*: the probe stream on the testbed\n  (added RTT over the migration and after), every data packet in the simulator (one-way); Mb/s< before, Mb/s~\n  from the request to 1 s after done; min_bin: lowest 100 ms goodput bin during the migration / median bin before"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_bin_ratio_compares_the_worst_migration_bin_with_the_median_before() {
        // 10 ms bins of 900, with a dip to 300 for 50 ms at 1200..1250 ms.
        let fine: Vec<(f64, f64)> = (0..300)
            .map(|i| {
                let t = i as f64 * 10.0;
                (
                    t,
                    if (1200.0..1250.0).contains(&t) {
                        300.0
                    } else {
                        900.0
                    },
                )
            })
            .collect();
        let coarse = rebin(&fine, 100.0);
        assert_eq!(coarse.len(), 30);
        assert_eq!(coarse[12], (1200.0, 600.0));
        let r = goodput_min_bin_ratio(&coarse, 100.0, 500.0, 1000.0, 1150.0).unwrap();
        assert!((r - 600.0 / 900.0).abs() < 1e-3, "{r}");
        // The dip lies beyond done + one bin: not counted.
        let r = goodput_min_bin_ratio(&coarse, 100.0, 500.0, 1000.0, 1050.0).unwrap();
        assert_eq!(r, 1.0);
        assert_eq!(goodput_min_bin_ratio(&coarse, 100.0, 0.0, 50.0, 60.0), None);
    }
}
