//! `flowshift experiment precopy`: the poster's open question. How effective is pre-copy on
//! realistic flow mixes, compared with idle + freeze-and-copy?
//!
//! # Set-up
//!
//! Two [`flowshift_migration::Instance`]s, A and B, run in the two-instance harness
//! ([`flowshift_harness`], no packet-level network simulator): its switch hands every packet
//! of the migrated group to the instance the controller's rules name (A, then B once the
//! real [`Orchestrator`](flowshift_control::orchestrator::Orchestrator) has redirected it),
//! translated packets are parsed and counted, packets A chains are delivered to B after the
//! one-way delay, and transfer frames travel through a FIFO link per direction with a fixed
//! one-way delay plus a serialization delay per byte (`--bandwidth-mbps`, 0 for none). On
//! `ReadyForCutover` the orchestrator redirects the switch at once; the barrier reply comes one
//! barrier delay later and the orchestrator then has `cutover_done` called. Time jumps from
//! event to event, so minutes of virtual time cost little. Nothing is ever sent anywhere:
//! everything happens in-process. The workloads (synthetic flows, pcap replay) come from
//! [`flowshift_sim::workload`].
//!
//! The group: external address 198.18.0.1, subscribers 100.64.0.1 .. 100.64.3.254
//! (`--subscribers` of them), servers in 198.19.0.0/16. Port blocks of 64 ports, at most 8 per
//! subscriber. Timeouts are the RFC minimums that `NatConfig::validate` accepts: UDP 120 s,
//! TCP transitory 4 min, TCP established 2 h 4 min.
//!
//! # Workloads
//!
//! * **synthetic** (seeded): flows arrive as a Poisson process (`--rate` flows/s), each UDP
//!   (`--udp-share`) or TCP, from a random subscriber (fresh source port) to a random server.
//!   Sizes in data packets are heavy-tailed: Pareto (`--alpha`, scale `--min-packets`) or Zipf
//!   (`--zipf-s`, size = rank x `--min-packets`), capped at `--max-packets`. A flow sends its
//!   data packets with exponential gaps at `--flow-pps`; TCP flows open with a SYN and close
//!   with a FIN. The server answers every outbound packet after `--server-rtt-ms` (SYN-ACK,
//!   ACK, FIN-ACK, or a UDP reply), addressed to the external port it was seen from. So a TCP
//!   flow ends closed both ways and its mapping then **lingers 4 min** (RFC 5382 transitory
//!   timeout), a UDP mapping 2 min after its last packet. Plus a **pre-existing population** of
//!   `--persistent` long-lived TCP connections (opened in the first 10 s, then a keepalive every
//!   `--keepalive-s` on average: messaging and push connections), and a warm-up of
//!   `--warmup-s` (default 300 s, longer than the 4-min linger) before the migration, so the
//!   table is in steady state when migration starts: most of its mappings are closed flows
//!   waiting to expire.
//! * **published flow-size distributions** (`--workload websearch,datamining,internet`, or
//!   `published`, or `all` with the synthetic one and the replay): the synthetic workload
//!   with sizes drawn by inverse CDF from a published table
//!   ([`flowshift_sim::workload::cdf`], each with its source: DCTCP web search, VL2 data
//!   mining, an Internet border link), bytes to 1460-byte packets, uncapped. Arrivals are
//!   Poisson at the rate that offers `--load` of `--link-mbps` (load x rate / 8 / mean size);
//!   each flow still sends at `--flow-pps`, so the tail's flows outlast the run and the load
//!   carried during a run is below the offered one. Long-lived population and warm-up as
//!   above.
//! * **replay** (`--pcap FILE`): 5-tuples, TCP flags and timestamps from a pcap file (Ethernet,
//!   raw-IP or IPv4 link types; other packets skipped and counted). A flow's initiator is the
//!   sender of its first packet (the receiver, if that packet is a SYN-ACK); initiators are
//!   mapped, deterministically in order of appearance, to subscriber addresses (keeping the port
//!   unless two endpoints would collide) and responders to servers in 198.19.0.0/16. A TCP flow
//!   whose capture starts mid-stream gets a synthesized SYN before its first packet (counted),
//!   since only an outbound SYN creates a TCP mapping. No replies are invented: the trace's own
//!   packets in both directions are replayed at their timestamps. The migration starts at
//!   `--pcap-migrate-at-s` (default: half the trace).
//!
//! # What is measured
//!
//! Per workload, a fresh run (same workload, same seed, same warm-up) per algorithm
//! (`--algorithms`):
//!
//! * `pre-copy`: per round the mappings copied, dirty, new and dead, when the round was
//!   acknowledged, the final (halted) stop-and-copy's size, the downtime `halted_ms` and the
//!   packets lost in it.
//! * `freeze-copy`: the idle rule of `--idle-mode`/`--idle-threshold`, by default the engine's
//!   (a death rate below 0.5 % of the remaining mappings per second over a 10-s window).
//! * `freeze-copy-wait`: an idle rule that waits for the lingering states: fewer than
//!   `--wait-threshold` deaths per second (absolute). Both report the states that expired in
//!   the idle phase versus those transferred, the idle phase's length, the longest freeze and
//!   the migration's duration.
//! * `stop-copy`: the baseline, everything copied while halted.
//!
//! Per pre-copy round the dirty fraction is `dirty` over the mappings at the start; with
//! several workloads the table ends with one line per workload and algorithm (rounds, dirty %
//! per round, final copy, halt, loss, expired in idle versus moved).
//!
//! Plus pre-copy again at each `--sweep-mbps` transfer rate: pre-copy converges only while the
//! channel copies mappings faster than traffic touches them. Everything goes to
//! `DIR/precopy.json` (deterministic for a seed: no wall-clock figures), plots to
//! `DIR/precopy.{svg,png}` (pre-copy's rounds, log scale), `DIR/precopy-sweep.{svg,png}`
//! (copied per round at each transfer rate) and `DIR/precopy-idle.{svg,png}` (mappings left on
//! the source during the idle phases), and a table to stdout.
//!
//! Dirty means what the engine says (see `flowshift_migration`): a mapping whose most recent
//! packet is at or after its last copy, or whose session count changed.
//!
//! # The idle phase and the 4-minute linger
//!
//! In steady state most of the table (over 90 % with the defaults) is flows that have ended and
//! whose mappings only wait for their timeout: the RFCs forbid shorter ones. Such a table loses
//! about 1/240 of its TCP and 1/120 of its UDP mappings per second whatever happens (about
//! 0.45 %/s with the default mix), which is already *below* the engine's default relative
//! threshold (0.5 %/s): the default idle phase ends after
//! its first 10-s window, having let only a few percent expire. Waiting for the closed flows
//! to expire (`freeze-copy-wait`) takes the whole transitory timeout, about 4 min, and then
//! leaves little more than the long-lived connections to freeze and copy. Closed-but-lingering
//! TCP mappings count as alive (they still hold their port) until the NAT expires them.
//!
//! # Files
//!
//! `args.rs` the options; `driver.rs` the run on the harness (the workload's events, what the
//! experiment observes); `report.rs` the report types, table and plots; this file the shared
//! constants and helpers and the runs (`run_one`, `experiment`, `run`). The submodules share
//! this file's imports and constants through `use super::*`.

mod args;
mod driver;
mod report;
#[cfg(test)]
mod tests;

pub use args::*;
use driver::*;
use report::*;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use flowshift_harness::{A, B, Faults, Harness, HarnessConfig, Observer};
use flowshift_migration::{
    Algorithm, Direction, Instance, InstanceId, MigrationConfig, MigrationEvent, MigrationReport,
    Params, Phase, RateMode,
};
use flowshift_nat::{DropReason, GroupConfig, Nat, NatConfig, Timeouts};
use flowshift_sim::workload::replay::{
    ReplayPlan, ReplayStats, TraceStats, plan_replay, read_pcap, sample_pcap,
};
use flowshift_sim::workload::{
    ACK, FIN, Flow, K_DATA, K_FIN, K_KEEPALIVE, K_REPLAY, K_REPLY, K_SYN, MAX_FLOWS,
    MAX_SUBSCRIBERS, MAX_ZIPF_RANKS, PSH, SUBSCRIBER_LEN, SUBSCRIBER_NET, SYN, SizeDist, Stage,
    Synth, SynthConfig, TCP, UDP, build_packet, parse_output,
};
use flowshift_wire::Instant;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// External address of the migrated group.
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// B's own group (unused by traffic; B must serve something).
const B_EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Bound on one run: loop steps.
const MAX_STEPS: u64 = 400_000_000;
/// Steps at one instant before the loop is declared stuck.
const MAX_STEPS_AT_ONE_TIME: u64 = 1_000_000;
/// Persistent connections open within this long from the start.
const PERSISTENT_OPEN_S: f64 = 10.0;
/// The sample pcap's fixed seed (the shipped `testdata/precopy-sample.pcap`).
const SAMPLE_SEED: u64 = 7;

/// A duration from seconds, clamped to [0, 1e9 s] (never panics).
fn secs(x: f64) -> Duration {
    if x.is_finite() && x > 0.0 {
        Duration::from_secs_f64(x.min(1e9))
    } else {
        Duration::ZERO
    }
}

fn ms_between(later: Instant, earlier: Instant) -> f64 {
    later.saturating_since(earlier).as_secs_f64() * 1e3
}

/// Runs one algorithm on one workload: warm up to `start`, migrate, run until both sides
/// completed (or `start + limit`).
fn run_one(
    args: &PrecopyArgs,
    replay: Option<Rc<ReplayPlan>>,
    start: Duration,
    limit: Duration,
    algo: AlgoChoice,
) -> Result<(RunOut, u64)> {
    let mut sim = new_sim(args, replay)?;
    let t_start = T0 + start;
    run_until(&mut sim, t_start, |_| false)?;
    let mix = table_mix(&sim);
    let before = sim.obs.stats.clone();
    sim.obs.log.start = sim.now;
    let id = sim
        .migrate(EXT, B, algo.algorithm(), args.params(algo))
        .context("start the migration")?;
    run_until(&mut sim, t_start + limit, finished)?;
    let hs = sim.stats();
    if hs.unsteered + hs.commands_refused + hs.frames_malformed + hs.unrouted + hs.queue_full != 0 {
        bail!("the harness refused part of the run: {hs:?}");
    }
    let during = sim.obs.stats.minus(&before);
    let rep = sim.a.report(id);
    let log = &sim.obs.log;
    let start_i = log.start;
    let at_start = log.rounds.first().map_or(0, |(_, r)| r.copied).max(1);
    let rounds: Vec<RoundOut> = log
        .rounds
        .iter()
        .map(|(t, r)| RoundOut {
            at_ms: ms_between(*t, start_i),
            dirty_fraction: f64::from(r.dirty) / f64::from(at_start),
            ..*r
        })
        .collect();
    let phases: Vec<(f64, Phase)> = log
        .phases
        .iter()
        .filter(|(_, on, _)| *on == A)
        .map(|(t, _, p)| (ms_between(*t, start_i), *p))
        .collect();
    let idle_ms = rep.as_ref().and_then(|r| {
        r.phases
            .iter()
            .find(|p| p.name == Phase::Idle)
            .map(|p| p.end_ms.unwrap_or(p.start_ms) - p.start_ms)
    });
    let final_copy = match algo {
        AlgoChoice::StopCopy => rep.as_ref().map(|r| r.states_transferred),
        _ => rounds.iter().find(|r| r.last).map(|r| r.copied),
    };
    let out = RunOut {
        algorithm: algo.name(),
        params: args.params(algo),
        completed: log.src_done.is_some() && log.dst_done.is_some(),
        aborted: log.aborted,
        start_s: start.as_secs_f64(),
        table_at_start: mix,
        duration_ms: log.src_done.map(|t| ms_between(t, start_i)),
        ready_ms: log.ready.map(|t| ms_between(t, start_i)),
        phases,
        copied_total: match algo {
            AlgoChoice::PreCopy => rounds.iter().map(|r| u64::from(r.copied)).sum(),
            _ => rep.as_ref().map_or(0, |r| u64::from(r.states_transferred)),
        },
        rounds,
        final_copy,
        downtime_ms: rep.as_ref().map_or(0.0, |r| r.halted_ms),
        idle_ms,
        states_expired_idle: rep.as_ref().map_or(0, |r| r.states_expired_idle),
        states_transferred: rep.as_ref().map_or(0, |r| r.states_transferred),
        max_freeze_ms: rep.as_ref().map_or(0.0, |r| r.max_freeze_ms),
        packets_lost: rep
            .as_ref()
            .map_or(0, |r| r.packets_lost_by_cause.values().sum()),
        packets_buffered: rep.as_ref().map_or(0, |r| r.packets_buffered),
        bytes_transferred: rep.as_ref().map_or(0, |r| r.bytes_transferred),
        idle_samples: log
            .idle
            .iter()
            .map(|(t, rem, exp)| (ms_between(*t, start_i) / 1e3, *rem, *exp))
            .collect(),
        traffic_during_migration: during,
        traffic_total: sim.obs.stats.clone(),
        source_report: rep,
    };
    Ok((out, sim.obs.flows.len() as u64))
}

/// Runs the whole experiment and returns the report (no files written).
fn experiment(args: &PrecopyArgs, progress: bool) -> Result<Report> {
    args.validate()?;
    let mut workloads = Vec::new();
    let limit = secs(args.idle_max_s) + Duration::from_secs(120);
    for w in args.workloads()? {
        let (wargs, description, plan, trace, start) = match w.dist {
            None => {
                let path = args
                    .pcap
                    .as_ref()
                    .ok_or_else(|| anyhow!("--pcap missing"))?;
                let (pkts, tstats) = read_pcap(path, args.pcap_max_packets)?;
                if pkts.is_empty() {
                    bail!("{}: no TCP/UDP packet in the trace", path.display());
                }
                let plan = plan_replay(&pkts, args.subscribers);
                let start = args.pcap_migrate_at_s.unwrap_or(tstats.duration_s / 2.0);
                let d = format!(
                    "replay of {} ({} packets, {:.1} s), migration at {:.1} s",
                    path.display(),
                    tstats.used,
                    tstats.duration_s,
                    start
                );
                let plan = Some(Rc::new(plan));
                (args.clone(), d, plan, Some(tstats), secs(start))
            }
            Some(dist) => {
                let a = args.for_dist(dist);
                let sizes = match dist.empirical() {
                    Some(c) => format!(
                        "{dist} sizes (mean {:.0} kB; {}) at offered load {} of {} Mbit/s",
                        c.mean_bytes() / 1e3,
                        c.source,
                        a.load,
                        a.link_mbps
                    ),
                    None => format!(
                        "{dist} sizes (min {} max {} packets)",
                        a.min_packets, a.max_packets
                    ),
                };
                let d = format!(
                    "synthetic: Poisson {:.3} flows/s, {sizes}, {} pkt/s per flow, {:.0}% UDP, {} long-lived, warm-up {} s",
                    a.rate,
                    a.flow_pps,
                    a.udp_share * 100.0,
                    a.persistent,
                    a.warmup_s
                );
                let start = secs(a.warmup_s);
                (a, d, None, None, start)
            }
        };
        let name = w.name;
        let mut runs = Vec::new();
        let mut flows_created = 0;
        for &algo in &args.algorithms {
            let wall = std::time::Instant::now();
            let (r, n) = run_one(&wargs, plan.clone(), start, limit, algo)?;
            if progress {
                eprintln!(
                    "precopy: {name} {} done in {:.1} s (wall)",
                    algo.name(),
                    wall.elapsed().as_secs_f64()
                );
            }
            flows_created = flows_created.max(n);
            runs.push(r);
        }
        let mut sweep = Vec::new();
        for &bw in args.sweep_mbps.iter().filter(|_| !args.no_sweep) {
            let a = PrecopyArgs {
                bandwidth_mbps: bw,
                ..wargs.clone()
            };
            let wall = std::time::Instant::now();
            let (r, _) = run_one(&a, plan.clone(), start, limit, AlgoChoice::PreCopy)?;
            if progress {
                eprintln!(
                    "precopy: {name} pre-copy at {bw} Mbit/s done in {:.1} s (wall)",
                    wall.elapsed().as_secs_f64()
                );
            }
            sweep.push(SweepPoint {
                bandwidth_mbps: bw,
                completed: r.completed,
                copied_total: r.copied_total,
                final_copy: r.final_copy,
                downtime_ms: r.downtime_ms,
                packets_lost: r.packets_lost,
                duration_ms: r.duration_ms,
                bytes_transferred: r.bytes_transferred,
                rounds: r.rounds,
            });
        }
        workloads.push(WorkloadOut {
            name,
            description,
            flows_created,
            trace,
            replay: plan.as_ref().map(|p| p.stats.clone()),
            runs,
            sweep,
        });
    }
    Ok(Report {
        experiment: "precopy",
        seed: args.seed,
        args: args.clone(),
        migration_config: args.mig_config(),
        workloads,
    })
}

/// `flowshift experiment precopy`: runs the experiment, writes `DIR/precopy.json` and the
/// plots, prints a table. With `--write-sample-pcap FILE` it only writes the sample trace.
pub fn run(args: &PrecopyArgs) -> Result<()> {
    if let Some(path) = &args.write_sample_pcap {
        let (bytes, flows) = sample_pcap(SAMPLE_SEED)?;
        std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} ({} bytes, {} flows)",
            path.display(),
            bytes.len(),
            flows.len()
        );
        return Ok(());
    }
    let report = experiment(args, true)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("precopy.json");
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    if !args.no_plot {
        plot(&report, &args.out)?;
    }
    print!("{}", table(&report));
    println!("wrote {}", json_path.display());
    Ok(())
}
