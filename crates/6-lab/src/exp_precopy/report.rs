//! Results: the report types written to `precopy.json`, the table and the plots.

use super::*;

// ------------------------------------------------------------------------------ results

/// One pre-copy round.
#[derive(Clone, Copy, Debug, Serialize)]
pub(super) struct RoundOut {
    pub(super) round: u32,
    /// When the round was acknowledged (ms after the migration started).
    pub(super) at_ms: f64,
    pub(super) copied: u32,
    pub(super) dirty: u32,
    pub(super) new: u32,
    pub(super) dead: u32,
    pub(super) last: bool,
    /// `dirty` over the mappings at the migration's start (round 0's copy), in [0, 1].
    pub(super) dirty_fraction: f64,
}

/// The table's make-up when the migration starts.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct TableMix {
    /// Mappings of the group on A.
    pub(super) mappings: u32,
    /// Sessions of the group on A.
    pub(super) sessions: u32,
    /// Flows that will still send (synthetic: started, not finished; replay: packets before
    /// and after the start), long-lived ones excluded.
    pub(super) active_flows: u64,
    /// Long-lived (persistent) connections.
    pub(super) persistent_flows: u64,
    /// Flows that sent their last packet within the last 4 min (TCP) or 2 min (UDP): their
    /// mappings linger and only wait to expire.
    pub(super) finished_lingering: u64,
}

/// The results of one algorithm on one workload.
#[derive(Clone, Debug, Serialize)]
pub(super) struct RunOut {
    pub(super) algorithm: &'static str,
    /// The migration's parameters.
    pub(super) params: Params,
    pub(super) completed: bool,
    pub(super) aborted: bool,
    /// Migration start (s of virtual time since the run began).
    pub(super) start_s: f64,
    pub(super) table_at_start: TableMix,
    /// Start to the source's `Completed` (ms).
    pub(super) duration_ms: Option<f64>,
    /// Start to `ReadyForCutover` (ms): the source holds nothing more.
    pub(super) ready_ms: Option<f64>,
    /// Phase changes on the source: (ms after start, phase).
    pub(super) phases: Vec<(f64, Phase)>,
    /// Pre-copy rounds, the final halted round last.
    pub(super) rounds: Vec<RoundOut>,
    /// Mappings sent: over all rounds (pre-copy), or moved (the others).
    pub(super) copied_total: u64,
    /// Size of the final stop-and-copy (pre-copy's halted round; stop-copy: everything).
    pub(super) final_copy: Option<u32>,
    /// Time the group was halted (stop-copy, pre-copy's final round), ms.
    pub(super) downtime_ms: f64,
    /// Freeze-copy: idle phase length (ms).
    pub(super) idle_ms: Option<f64>,
    /// Freeze-copy: mappings that expired on the source during prepare and idle.
    pub(super) states_expired_idle: u32,
    /// Mappings moved to B.
    pub(super) states_transferred: u32,
    /// Longest freeze of a mapping or halt of the group (ms).
    pub(super) max_freeze_ms: f64,
    /// Packets lost because of the migration.
    pub(super) packets_lost: u64,
    /// Packets buffered at the source (freeze) or held at the destination (cutover).
    pub(super) packets_buffered: u64,
    /// Protocol bytes the source sent.
    pub(super) bytes_transferred: u64,
    /// Freeze-copy idle samples: (s after start, mappings remaining on A, expired so far).
    pub(super) idle_samples: Vec<(f64, u32, u32)>,
    /// Driver counters from the migration's start to its end.
    pub(super) traffic_during_migration: DriverStats,
    /// Driver counters of the whole run.
    pub(super) traffic_total: DriverStats,
    /// The source's full report.
    pub(super) source_report: Option<MigrationReport>,
}

/// The results of one workload.
#[derive(Clone, Debug, Serialize)]
pub(super) struct WorkloadOut {
    pub(super) name: &'static str,
    pub(super) description: String,
    pub(super) flows_created: u64,
    pub(super) trace: Option<TraceStats>,
    pub(super) replay: Option<ReplayStats>,
    pub(super) runs: Vec<RunOut>,
    /// Pre-copy at other transfer-link rates.
    pub(super) sweep: Vec<SweepPoint>,
}

/// Pre-copy at one transfer-link rate.
#[derive(Clone, Debug, Serialize)]
pub(super) struct SweepPoint {
    pub(super) bandwidth_mbps: f64,
    pub(super) completed: bool,
    pub(super) rounds: Vec<RoundOut>,
    pub(super) copied_total: u64,
    pub(super) final_copy: Option<u32>,
    pub(super) downtime_ms: f64,
    pub(super) packets_lost: u64,
    pub(super) duration_ms: Option<f64>,
    pub(super) bytes_transferred: u64,
}

/// The whole report (`precopy.json`).
#[derive(Clone, Debug, Serialize)]
pub(super) struct Report {
    pub(super) experiment: &'static str,
    pub(super) seed: u64,
    pub(super) args: PrecopyArgs,
    /// Defaults of the transfer engine in force, as used.
    pub(super) migration_config: MigrationConfig,
    pub(super) workloads: Vec<WorkloadOut>,
}

pub(super) fn table_mix(sim: &Sim) -> TableMix {
    let now = sim.now;
    let mut m = TableMix::default();
    if let Some(g) = sim.a.nat().group_id(EXT)
        && let Ok(s) = sim.a.nat().group_stats(g)
    {
        m.mappings = s.mappings;
        m.sessions = s.sessions;
    }
    let replay = sim.obs.replay.is_some();
    for f in &sim.obs.flows {
        if f.persistent {
            m.persistent_flows += 1;
            continue;
        }
        let active = if replay {
            let t = now.saturating_since(T0);
            f.first <= t && f.last > t
        } else {
            !matches!(f.stage, Stage::Done) && f.ext_port.is_some()
        };
        if active {
            m.active_flows += 1;
        }
    }
    m.finished_lingering = u64::from(m.mappings)
        .saturating_sub(m.active_flows)
        .saturating_sub(m.persistent_flows);
    m
}

pub(super) fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for w in &r.workloads {
        let _ = writeln!(s, "\n== {} (seed {}): {}", w.name, r.seed, w.description);
        if let Some(m) = w.runs.first().map(|r| &r.table_at_start) {
            let _ = writeln!(
                s,
                "table at start: {} mappings ({} sessions): ~{} active flows, {} long-lived, ~{} finished and lingering",
                m.mappings, m.sessions, m.active_flows, m.persistent_flows, m.finished_lingering
            );
        }
        let _ = writeln!(
            s,
            "{:<16} {:>4} {:>9} {:>9} {:>10} {:>9} {:>6} {:>9} {:>9} {:>10} {:>11} {:>10}",
            "algorithm",
            "done",
            "at start",
            "copied",
            "final copy",
            "downtime",
            "lost",
            "expired",
            "moved",
            "max freeze",
            "duration",
            "bytes"
        );
        for x in &w.runs {
            let _ = writeln!(
                s,
                "{:<16} {:>4} {:>9} {:>9} {:>10} {:>7.2}ms {:>6} {:>9} {:>9} {:>8.2}ms {:>10.3}s {:>10}",
                x.algorithm,
                if x.completed { "yes" } else { "NO" },
                x.source_report.as_ref().map_or(0, |r| r.mappings_at_start),
                x.copied_total,
                x.final_copy.map_or("-".to_string(), |c| c.to_string()),
                x.downtime_ms,
                x.packets_lost,
                x.states_expired_idle,
                x.states_transferred,
                x.max_freeze_ms,
                x.duration_ms.unwrap_or(f64::NAN) / 1e3,
                x.bytes_transferred
            );
            if !x.rounds.is_empty() && x.algorithm == "pre-copy" {
                let _ = writeln!(
                    s,
                    "  {:>5} {:>9} {:>8} {:>7} {:>6} {:>6} {:>10}",
                    "round", "copied", "dirty", "dirty%", "new", "dead", "acked at"
                );
                for r in &x.rounds {
                    let _ = writeln!(
                        s,
                        "  {:>5} {:>9} {:>8} {:>6.2}% {:>6} {:>6} {:>8.2}ms{}",
                        r.round,
                        r.copied,
                        r.dirty,
                        r.dirty_fraction * 100.0,
                        r.new,
                        r.dead,
                        r.at_ms,
                        if r.last { "  (halted)" } else { "" }
                    );
                }
            }
            if let Some(i) = x.idle_ms {
                let left = x.idle_samples.last().map_or(String::new(), |l| {
                    format!(" ({} left at the last sample)", l.1)
                });
                let _ = writeln!(
                    s,
                    "  idle phase {:.1} s: {} of {} mappings expired, {} transferred{}",
                    i / 1e3,
                    x.states_expired_idle,
                    x.source_report.as_ref().map_or(0, |r| r.mappings_at_start),
                    x.states_transferred,
                    left
                );
            }
        }
        if !w.sweep.is_empty() {
            let _ = writeln!(
                s,
                "pre-copy versus transfer rate:\n{:>10} {:>4} {:>6} {:>9} {:>10} {:>10} {:>6} {:>10}  copied per round",
                "Mbit/s", "done", "rounds", "copied", "final copy", "downtime", "lost", "duration"
            );
            for p in &w.sweep {
                let per_round: Vec<String> =
                    p.rounds.iter().map(|r| r.copied.to_string()).collect();
                let _ = writeln!(
                    s,
                    "{:>10} {:>4} {:>6} {:>9} {:>10} {:>8.2}ms {:>6} {:>9.3}s  {}",
                    p.bandwidth_mbps,
                    if p.completed { "yes" } else { "NO" },
                    p.rounds.len(),
                    p.copied_total,
                    p.final_copy.map_or("-".to_string(), |c| c.to_string()),
                    p.downtime_ms,
                    p.packets_lost,
                    p.duration_ms.unwrap_or(f64::NAN) / 1e3,
                    per_round.join(" ")
                );
            }
        }
    }
    if r.workloads.len() > 1 {
        s.push_str(&summary(r));
    }
    s
}

/// One line per workload and algorithm: rounds, dirty fraction per round, final halt, loss,
/// expired in the idle phase versus transferred (printed when there are several workloads).
pub(super) fn summary(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== per workload (seed {})\n{:<11} {:<16} {:>9} {:>6} {:>10} {:>9} {:>6} {:>8} {:>8}  dirty % per round",
        r.seed,
        "workload",
        "algorithm",
        "mappings",
        "rounds",
        "final copy",
        "halt",
        "lost",
        "expired",
        "moved"
    );
    for w in &r.workloads {
        for x in &w.runs {
            let dirty: Vec<String> = x
                .rounds
                .iter()
                .skip(1)
                .map(|r| format!("{:.1}", r.dirty_fraction * 100.0))
                .collect();
            let _ = writeln!(
                s,
                "{:<11} {:<16} {:>9} {:>6} {:>10} {:>7.2}ms {:>6} {:>8} {:>8}  {}",
                w.name,
                x.algorithm,
                x.table_at_start.mappings,
                if x.rounds.is_empty() {
                    "-".to_string()
                } else {
                    x.rounds.len().to_string()
                },
                x.final_copy.map_or("-".to_string(), |c| c.to_string()),
                x.downtime_ms,
                x.packets_lost,
                x.states_expired_idle,
                x.states_transferred,
                if dirty.is_empty() {
                    "-".to_string()
                } else {
                    dirty.join(" ")
                }
            );
        }
    }
    s
}

pub(super) fn plot(r: &Report, dir: &Path) -> Result<()> {
    use crate::plot::{Figure, Series, Span, write};
    // (label, points, end of the idle phase in s).
    type IdleLine = (String, Vec<(f64, f64)>, Option<f64>);
    let mut idle_series: Vec<IdleLine> = Vec::new();
    for (wi, w) in r.workloads.iter().enumerate() {
        for x in &w.runs {
            if x.algorithm == "pre-copy" && !x.rounds.is_empty() {
                // Log scale: zero counts are drawn at 0.5.
                let pts = |f: fn(&RoundOut) -> u32| -> Vec<(f64, f64)> {
                    x.rounds
                        .iter()
                        .map(|r| (r.round as f64, f64::from(f(r)).max(0.5)))
                        .collect()
                };
                let (c, d, n, k) = (
                    pts(|r| r.copied),
                    pts(|r| r.dirty),
                    pts(|r| r.new),
                    pts(|r| r.dead),
                );
                let title = format!(
                    "pre-copy rounds, {} workload (last round: halted stop-and-copy)",
                    w.name
                );
                let fig = Figure {
                    title: &title,
                    x_label: "round",
                    y_label: "mappings (log; 0 drawn at 0.5)",
                    series: vec![
                        Series {
                            label: "copied",
                            points: &c,
                        },
                        Series {
                            label: "dirty",
                            points: &d,
                        },
                        Series {
                            label: "new",
                            points: &n,
                        },
                        Series {
                            label: "dead",
                            points: &k,
                        },
                    ],
                    spans: vec![],
                    log_y: true,
                    log_x: false,
                };
                let stem = if wi == 0 {
                    dir.join("precopy")
                } else {
                    dir.join(format!("precopy-{}", w.name))
                };
                write(&fig, &stem)?;
            }
            if !x.idle_samples.is_empty() {
                let pts = x
                    .idle_samples
                    .iter()
                    .map(|(t, rem, _)| (*t, f64::from(*rem)))
                    .collect();
                idle_series.push((
                    format!("{} {}", w.name, x.algorithm),
                    pts,
                    x.idle_ms.map(|ms| ms / 1e3),
                ));
            }
        }
        // Pre-copy's copied-per-round at each transfer rate (the main run included).
        let mut sweep: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        let rounds_pts = |rounds: &[RoundOut]| -> Vec<(f64, f64)> {
            rounds
                .iter()
                .map(|r| (r.round as f64, f64::from(r.copied).max(0.5)))
                .collect()
        };
        if let Some(x) = w.runs.iter().find(|x| x.algorithm == "pre-copy") {
            sweep.push((
                format!("{} Mbit/s", r.args.bandwidth_mbps),
                rounds_pts(&x.rounds),
            ));
        }
        for p in &w.sweep {
            sweep.push((
                format!("{} Mbit/s", p.bandwidth_mbps),
                rounds_pts(&p.rounds),
            ));
        }
        if sweep.len() > 1 {
            let title = format!(
                "pre-copy: mappings copied per round by transfer rate, {} workload",
                w.name
            );
            let fig = Figure {
                title: &title,
                x_label: "round (the last one of each line is the halted stop-and-copy)",
                y_label: "mappings copied (log)",
                series: sweep
                    .iter()
                    .map(|(l, p)| Series {
                        label: l,
                        points: p,
                    })
                    .collect(),
                spans: vec![],
                log_y: true,
                log_x: false,
            };
            let stem = if wi == 0 {
                dir.join("precopy-sweep")
            } else {
                dir.join(format!("precopy-sweep-{}", w.name))
            };
            write(&fig, &stem)?;
        }
    }
    if !idle_series.is_empty() {
        let x_max = idle_series
            .iter()
            .flat_map(|(_, p, _)| p.iter().map(|q| q.0))
            .fold(1.0, f64::max);
        // Longest first, so shorter idle phases are drawn on top of the longer ones.
        idle_series.sort_by_key(|(_, p, _)| Reverse(p.len()));
        let end_labels: Vec<String> = idle_series
            .iter()
            .map(|(l, ..)| format!("{l}: idle ends"))
            .collect();
        let fig = Figure {
            title: "freeze-copy idle phase: mappings left on the source",
            x_label: "time since migration start (s)",
            y_label: "mappings on the source",
            series: idle_series
                .iter()
                .map(|(l, p, _)| Series {
                    label: l,
                    points: p,
                })
                .collect(),
            // A thin band where each idle phase ended, unless at the right edge (no room for
            // its label).
            spans: idle_series
                .iter()
                .enumerate()
                .filter_map(|(i, (_, _, end))| {
                    let t = (*end)?;
                    (t < 0.85 * x_max).then(|| Span {
                        label: &end_labels[i],
                        start: t,
                        end: t + x_max / 200.0,
                        series: i,
                    })
                })
                .collect(),
            log_y: false,
            log_x: false,
        };
        write(&fig, &dir.join("precopy-idle"))?;
    }
    Ok(())
}
