//! `flowshift experiment elastic`: reactive scaling on the simulator
//! ([`flowshift_sim::elastic`]): a surge (or a compressed day) of subscriber connections over
//! 32 groups, nodes brought into service and taken out by the real policy and orchestrator.
//! Compares, on the same workload (same seed): scaling with freeze-and-copy, scaling with
//! stop-and-copy, and no scaling. Writes `elastic.json`, plots (nodes in service, per-node
//! load with the migrations marked, goodput and losses) and prints a table. With `--testbed`
//! the same policy runs on the real cluster ([`crate::testbed::exp_elastic`]): one variant
//! (freeze-copy), the same report shape and plots.

use crate::plot::{self, Figure, Series, Span};
use crate::report::{round, write_json};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use flowshift_migration::InstanceId;
use flowshift_sim::elastic::traffic::Profile;
use flowshift_sim::elastic::{self, ElasticConfig, ElasticRun, MigrationRecord, Sample, Scaling};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The load's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// Ramp up to `--factor` x, hold, ramp down (the default scenario).
    Step,
    /// One compressed day: a smooth rise to `--factor` x at half the run and back.
    Diurnal,
}

/// How the cluster reacts, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScalingChoice {
    /// Policy + idle/freeze-and-copy.
    FreezeCopy,
    /// Policy + stop-and-copy.
    StopCopy,
    /// Policy + pre-copy.
    PreCopy,
    /// No policy.
    None,
}

impl ScalingChoice {
    fn scaling(self) -> Scaling {
        match self {
            ScalingChoice::FreezeCopy => Scaling::FreezeCopy,
            ScalingChoice::StopCopy => Scaling::StopCopy,
            ScalingChoice::PreCopy => Scaling::PreCopy,
            ScalingChoice::None => Scaling::None,
        }
    }
}

/// Arguments of `experiment elastic`.
#[derive(Args, Debug)]
pub struct ElasticArgs {
    /// Seed (the same workload for every variant).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Variants to run (simulator; the testbed runs freeze-copy).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "freeze-copy,stop-copy,none"
    )]
    scaling: Vec<ScalingChoice>,
    /// Load shape (simulator; the testbed steps).
    #[arg(long, value_enum, default_value = "step")]
    shape: Shape,
    /// Peak factor of the connection arrival rate (testbed: of the probe rate).
    #[arg(long, default_value_t = 5.0)]
    factor: f64,
    /// Nodes in all, one in service at start [default: 4; testbed 3].
    #[arg(long)]
    nodes: Option<u16>,
    /// Groups (a power of two, at most 64: a /26 pool) [default: 32; testbed 8].
    #[arg(long)]
    groups: Option<u32>,
    /// Packets per second one node processes [default: 10000; testbed: the base load is
    /// 0.35 of a node].
    #[arg(long)]
    capacity_pps: Option<f64>,
    /// Seconds from `StartNode` to the node in service (simulator).
    #[arg(long, default_value_t = 2.0)]
    start_delay_s: f64,
    /// Length of the run (s) [default: 150; testbed 60].
    #[arg(long)]
    duration_s: Option<f64>,
    /// Output directory.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Run on the one-machine testbed (root): real nodes, controller and switch, standby
    /// nodes started and stopped by the policy, UDP probe streams as load.
    #[arg(long)]
    testbed: bool,
    /// Testbed: probes per second per group at base load.
    #[arg(long, default_value_t = 50)]
    base_rate: u32,
    /// Testbed: seconds of each short surge flow (a new session each); 0: one flow per group
    /// for the whole surge.
    #[arg(long, default_value_t = 3.0)]
    flow_s: f64,
}

impl ElasticArgs {
    fn nodes(&self) -> u16 {
        self.nodes.unwrap_or(if self.testbed { 3 } else { 4 })
    }
    fn groups(&self) -> u32 {
        self.groups.unwrap_or(if self.testbed { 8 } else { 32 })
    }
    fn duration_s(&self) -> f64 {
        self.duration_s
            .unwrap_or(if self.testbed { 60.0 } else { 150.0 })
    }
}

fn config(a: &ElasticArgs, scaling: Scaling) -> Result<ElasticConfig> {
    let capacity_pps = a.capacity_pps.unwrap_or(10_000.0);
    let duration_s = a.duration_s();
    if !(capacity_pps > 0.0 && a.factor >= 1.0 && duration_s > 0.0 && a.start_delay_s >= 0.0) {
        bail!("need --capacity-pps > 0, --factor >= 1, --duration-s > 0, --start-delay-s >= 0");
    }
    let mut c = ElasticConfig::surge(scaling, a.seed);
    c.nodes = a.nodes();
    c.groups = a.groups();
    let scale = capacity_pps / c.capacity.pps;
    c.capacity.pps = capacity_pps;
    c.capacity.burst = (capacity_pps / 50.0).max(1.0);
    c.autoscale.capacity_pps = capacity_pps;
    c.traffic.base_arrivals *= scale;
    c.start_delay = Duration::from_secs_f64(a.start_delay_s);
    c.duration = Duration::from_secs_f64(duration_s);
    c.traffic.profile = match (a.shape, &c.traffic.profile) {
        (
            Shape::Step,
            Profile::Step {
                rise_at,
                ramp,
                hold,
                ..
            },
        ) => Profile::Step {
            rise_at: *rise_at,
            ramp: *ramp,
            hold: *hold,
            factor: a.factor,
        },
        _ => Profile::Diurnal {
            period: c.duration,
            factor: a.factor,
        },
    };
    Ok(c)
}

/// Node-seconds in service (what the cluster cost).
fn node_seconds(r: &ElasticRun) -> f64 {
    let dt = r.config.load_interval.as_secs_f64();
    r.samples.iter().map(|s| f64::from(s.in_service) * dt).sum()
}

fn summary_json(r: &ElasticRun) -> serde_json::Value {
    let ms = &r.migrations;
    let max = |f: fn(&elastic::MigrationRecord) -> f64| ms.iter().map(f).fold(0.0, f64::max);
    json!({
        "scaling": r.config.scaling.name(),
        "max_nodes_in_service": r.max_in_service,
        "node_seconds": round(node_seconds(r), 1),
        "migrations": ms.len(),
        "migrations_completed": ms.iter().filter(|m| m.completed).count(),
        "states_moved": ms.iter().map(|m| u64::from(m.states_moved)).sum::<u64>(),
        "states_expired_idle": ms.iter().map(|m| u64::from(m.states_expired_idle)).sum::<u64>(),
        "max_freeze_ms": round(max(|m| m.max_freeze_ms), 3),
        "max_halted_ms": round(max(|m| m.halted_ms), 3),
        "packets_sent": r.sent,
        "packets_delivered": r.delivered,
        "lost_overload": r.lost_overload,
        "lost_migration": r.lost_migration,
        "drops_by_cause": r.drops_by_cause,
        "longest_overload_s": r.longest_overload_s,
        "connections_opened": r.connections.0,
        "events": r.events,
        "invariants": r.invariants.as_ref().map(|_| "ok").unwrap_or_else(|e| e),
    })
}

/// Runs the experiment.
pub fn run(a: &ElasticArgs) -> Result<()> {
    if a.testbed {
        return crate::testbed::exp_elastic::run(&crate::testbed::exp_elastic::Options {
            nodes: a.nodes(),
            groups: a.groups(),
            factor: a.factor,
            duration_s: a.duration_s(),
            base_rate: a.base_rate,
            flow_s: a.flow_s,
            capacity_pps: a.capacity_pps,
            out: a.out.clone(),
        });
    }
    if a.scaling.is_empty() {
        bail!("--scaling needs at least one variant");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut runs = Vec::new();
    for &s in &a.scaling {
        let c = config(a, s.scaling())?;
        let t0 = std::time::Instant::now();
        let r = elastic::run(&c, &mut |_| {}).map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!(
            "{}: {:.0} simulated s in {:.1} s ({} events)",
            s.scaling().name(),
            c.duration.as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            r.events
        );
        runs.push(r);
    }
    let report = json!({
        "experiment": "elastic",
        "backend": "simulator",
        "seed": a.seed,
        "summary": runs.iter().map(summary_json).collect::<Vec<_>>(),
        "runs": runs,
    });
    write_json(&a.out.join("elastic.json"), &report)?;
    print_table(&runs);
    write_plots(a, &runs)?;
    println!(
        "wrote {0}/elastic.json and elastic-{{nodes,load,goodput}}.{{svg,png}}",
        a.out.display()
    );
    Ok(())
}

fn print_table(runs: &[ElasticRun]) {
    println!(
        "{:<12} {:>6} {:>9} {:>5} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>11}",
        "scaling",
        "nodes",
        "node_s",
        "migr",
        "moved",
        "expired",
        "freeze_ms",
        "halted_ms",
        "lost_ovl",
        "lost_migr",
        "deliv_%",
        "overload_s"
    );
    for r in runs {
        let j = summary_json(r);
        let worst = r.longest_overload_s.values().copied().fold(0.0, f64::max);
        println!(
            "{:<12} {:>6} {:>9.1} {:>5} {:>8} {:>8} {:>10.3} {:>10.3} {:>10} {:>10} {:>9.3} {:>11.1}",
            r.config.scaling.name(),
            r.max_in_service,
            node_seconds(r),
            r.migrations.len(),
            j["states_moved"],
            j["states_expired_idle"],
            j["max_freeze_ms"].as_f64().unwrap_or(0.0),
            j["max_halted_ms"].as_f64().unwrap_or(0.0),
            r.lost_overload,
            r.lost_migration,
            100.0 * r.delivered as f64 / r.sent.max(1) as f64,
            worst,
        );
    }
    if let Some(r) = runs.first() {
        println!("migrations ({}):", r.config.scaling.name());
        print_migrations(&r.migrations);
    }
}

/// Prints one line per migration: when, group, nodes, states moved and expired in idle,
/// longest freeze (or halt), duration and packets lost.
pub(crate) fn print_migrations(ms: &[MigrationRecord]) {
    println!(
        "{:>8} {:<14} {:>4} {:>6} {:>6} {:>8} {:>10} {:>10} {:>5}",
        "at_s", "group", "from", "to", "moved", "expired", "freeze_ms", "dur_ms", "lost"
    );
    for m in ms {
        println!(
            "{:>8.1} {:<14} {:>4} {:>6} {:>6} {:>8} {:>10.3} {:>10.1} {:>5}",
            m.requested_s,
            m.external.map(|e| e.to_string()).unwrap_or_default(),
            m.from,
            m.to,
            m.states_moved,
            m.states_expired_idle,
            m.max_freeze_ms.max(m.halted_ms),
            m.ended_s.map_or(f64::NAN, |e| (e - m.requested_s) * 1e3),
            m.lost_by_cause.values().sum::<u64>(),
        );
    }
}

fn write_plots(a: &ElasticArgs, runs: &[ElasticRun]) -> Result<()> {
    let names: Vec<&str> = runs.iter().map(|r| r.config.scaling.name()).collect();
    let plot_runs: Vec<PlotRun<'_>> = runs
        .iter()
        .zip(&names)
        .map(|(r, n)| PlotRun {
            name: n,
            samples: &r.samples,
            migrations: &r.migrations,
            interval_s: r.config.load_interval.as_secs_f64(),
            capacity_pps: r.config.capacity.pps,
        })
        .collect();
    write_plots_of(&a.out, &plot_runs, "packets/s")
}

/// One variant as the plots see it (the simulator's runs and the testbed's alike).
pub(crate) struct PlotRun<'a> {
    /// Its name in the legends.
    pub name: &'a str,
    /// Its samples.
    pub samples: &'a [Sample],
    /// Its migrations.
    pub migrations: &'a [MigrationRecord],
    /// Seconds between samples.
    pub interval_s: f64,
    /// Packets/s one node is sized for.
    pub capacity_pps: f64,
}

/// Writes `elastic-{nodes,load,goodput}.{svg,png}` into `out`: nodes in service (and the
/// offered load in node capacities), the first run's per-node load with its migrations
/// marked, goodput and losses per second (`rate_unit`: the goodput axis label).
pub(crate) fn write_plots_of(out: &Path, runs: &[PlotRun<'_>], rate_unit: &str) -> Result<()> {
    // Nodes in service, and the offered load in node capacities.
    let mut pts: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let p = r.samples.iter().map(|s| (s.t_s, f64::from(s.in_service)));
            (format!("{}: nodes in service", r.name), p.collect())
        })
        .collect();
    if let Some(r) = runs.first() {
        let p = r
            .samples
            .iter()
            .map(|s| (s.t_s, s.offered_pps / r.capacity_pps));
        pts.push(("offered load (node capacities)".into(), p.collect()));
    }
    write_time_plot(
        "Elastic CGNAT: nodes in service",
        "nodes",
        &pts,
        Vec::new(),
        &out.join("elastic-nodes"),
    )?;
    // Per-node load of the first variant, migrations marked.
    if let Some(r) = runs.first() {
        let ids: BTreeSet<InstanceId> = r
            .samples
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.node))
            .collect();
        let ids: Vec<InstanceId> = ids.into_iter().collect();
        let pts: Vec<(String, Vec<(f64, f64)>)> = ids
            .iter()
            .map(|&id| {
                let p = r.samples.iter().filter_map(|s| {
                    let ns = s.nodes.iter().find(|n| n.node == id)?;
                    ns.in_service.then_some((s.t_s, ns.load))
                });
                (format!("node {id}"), p.collect())
            })
            .collect();
        let labels: Vec<String> = r
            .migrations
            .iter()
            .map(|m| format!("{}>{}", m.from, m.to))
            .collect();
        let spans = r
            .migrations
            .iter()
            .zip(&labels)
            .map(|(m, l)| Span {
                label: l,
                start: m.requested_s,
                end: m.ended_s.unwrap_or(m.requested_s),
                series: ids.iter().position(|&i| i == m.to).unwrap_or(0),
            })
            .collect();
        let title = format!("Per-node load ({}), migrations marked", r.name);
        write_time_plot(
            &title,
            "load (1.0 = capacity)",
            &pts,
            spans,
            &out.join("elastic-load"),
        )?;
    }
    // Goodput and losses.
    let mut pts: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in runs {
        let g = r.samples.iter().map(|s| (s.t_s, s.goodput_pps));
        pts.push((format!("{}: goodput", r.name), g.collect()));
        let l = r.samples.iter().map(|s| {
            let lost = s.lost_overload + s.lost_migration + s.lost_other;
            (s.t_s, lost as f64 / r.interval_s)
        });
        pts.push((format!("{}: lost", r.name), l.collect()));
    }
    write_time_plot(
        "Elastic CGNAT: delivered and lost per second",
        rate_unit,
        &pts,
        Vec::new(),
        &out.join("elastic-goodput"),
    )
}

/// Writes a plot of `pts` (label, (time s, value)) over time, with `spans` marked.
fn write_time_plot(
    title: &str,
    y_label: &str,
    pts: &[(String, Vec<(f64, f64)>)],
    spans: Vec<Span<'_>>,
    out: &Path,
) -> Result<()> {
    let fig = Figure {
        title,
        x_label: "time (s)",
        y_label,
        series: pts
            .iter()
            .map(|(l, p)| Series {
                label: l,
                points: p,
            })
            .collect(),
        spans,
        log_y: false,
        log_x: false,
    };
    plot::write(&fig, out)
}
