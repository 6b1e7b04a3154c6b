//! `flowshift experiment elastic --testbed`: the autoscale policy on the real cluster.
//!
//! A testbed with one active node and `nodes - 1` standby nodes ([`super::standby`]), the pool
//! split into `groups` groups, the controller's `[autoscale]` policy with freeze-copy, and
//! `testbed node start|stop` as its commands. **Load**: one sequence-numbered UDP probe
//! stream per group (`flowshift probe send`, from the group's subscriber host to one echo in
//! the server namespace) at `base_rate` probes/s for the whole run, plus, during the surge
//! ([`SURGE_FROM`]..[`SURGE_TO`] of the run), many short flows per group at `(factor - 1) x
//! base_rate`: one after the other, each `flow_s` long from a new source port (a new
//! session); the offered load steps up `factor` times and falls back. Every load packet is a
//! probe, so loss and reordering are measured from outside the NAT on all of it. A node's
//! capacity is scaled to the load: the base load is [`BASE_LOAD`] of one node.
//!
//! **Samples** every [`INTERVAL`] from `GET /status`: nodes in service and each node's
//! policy state and load, packets/s from its `io.rx_packets`, sessions and groups, its loss
//! counters (`lost_migration`) and ring drops (`lost_overload`); probes sent, answered and
//! lost by send time (`offered_pps`, `goodput_pps` in packets through the NAT: two per probe
//! round trip; `lost_other`: probes lost). **Migrations** from the controller's list and each
//! source's report (states moved, expired in idle, longest freeze), fetched as soon as the
//! migration ends (the policy stops a drained source soon after). **CPU** of every node (its own counter), the controller and
//! `ovs-vswitchd`, and the machine, beside the throughput. The report has the simulator's
//! shape ([`flowshift_sim::elastic`] samples and migration records, the same plots).

use super::bed::{Testbed, UpOptions};
use super::exp_measure::unix_now_ns;
use super::layout::Elastic;
use super::probe::{self, ProbeProcess};
use super::sys;
use crate::exp_elastic::{PlotRun, print_migrations, write_plots_of};
use crate::report::{round, write_json};
use anyhow::{Context, Result, bail};
use flowshift_control::api::ClusterStatus;
use flowshift_control::autoscale::NodeState;
use flowshift_control::orchestrator::Stage;
use flowshift_migration::InstanceId;
use flowshift_sim::elastic::{MigrationRecord, NodeEvent, NodeSample, Sample};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Seconds between samples.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// The base load, as a fraction of one node's capacity.
pub const BASE_LOAD: f64 = 0.35;
/// The surge starts at this fraction of the run...
pub const SURGE_FROM: f64 = 0.15;
/// ... and ends at this one.
pub const SURGE_TO: f64 = 0.5;
/// The probe echo (second server address, the probe port).
const ECHO: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 11), 7001);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes in all (node 1 active, the others standby), 2..=16.
    pub nodes: u16,
    /// Groups of the pool (a power of two <= 64).
    pub groups: u32,
    /// Peak factor of the offered load (>= 1).
    pub factor: f64,
    /// Length of the run (s).
    pub duration_s: f64,
    /// Probes/s per group at base load.
    pub base_rate: u32,
    /// Seconds of each surge flow (0: one flow per group for the whole surge).
    pub flow_s: f64,
    /// Packets/s one node is sized for; `None`: the base load is [`BASE_LOAD`] of it.
    pub capacity_pps: Option<f64>,
    /// Output directory.
    pub out: PathBuf,
}

/// One controller status and when it was taken (s since the start).
struct Snap {
    t_s: f64,
    status: ClusterStatus,
}

/// Runs the experiment (root).
pub fn run(o: &Options) -> Result<()> {
    super::bed::require_root("`flowshift experiment elastic --testbed`")?;
    if o.nodes < 2 || o.factor < 1.0 || o.duration_s < 10.0 || o.base_rate == 0 {
        bail!("need --nodes >= 2, --factor >= 1, --duration-s >= 10 and a positive base rate");
    }
    sys::catch_interrupts();
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    // Round trips are two packets through the node.
    let base_pps = 2.0 * f64::from(o.base_rate) * f64::from(o.groups);
    let capacity = o.capacity_pps.unwrap_or(base_pps / BASE_LOAD);
    let exe = std::env::current_exe().context("locating the flowshift executable")?;
    let elastic = Elastic {
        active: 1,
        pool_groups: o.groups,
        capacity_pps: capacity.round().max(1.0) as u64,
        exe: exe.display().to_string(),
    };
    let tb = Testbed::up(&UpOptions {
        nodes: o.nodes,
        preload: 0,
        seed: 1,
        tso: false,
        filtering: "endpoint-independent".into(),
        link_rate_bps: None,
        switch_tls: false,
        verbose: true,
        elastic: Some(elastic.clone()),
        wan: None,
    })?;
    let out = measure(&tb, o, &elastic);
    let run = tb.state.run.clone();
    let down = tb.down();
    let report = out?;
    down?;
    eprintln!("testbed {run} removed");
    write_json(&o.out.join("elastic-testbed.json"), &report)?;
    println!(
        "wrote {0}/elastic-testbed.json and elastic-{{nodes,load,goodput}}.{{svg,png}}",
        o.out.display()
    );
    Ok(())
}

fn measure(tb: &Testbed, o: &Options, e: &Elastic) -> Result<Value> {
    let s = &tb.state;
    let api = s.api_client()?.with_timeout(Duration::from_secs(2));
    let dir = s.dir.clone();
    let d = o.duration_s;
    let mut echo = probe::start_echo(&s.ns_srv, ECHO, d + 15.0, &dir)?;
    let origin_ns = unix_now_ns();
    let t0 = Instant::now();
    let hosts: Vec<Ipv4Addr> = (0..o.groups as usize)
        .filter_map(|i| e.subscriber(i))
        .collect();
    let mut senders: Vec<(ProbeProcess, PathBuf)> = Vec::new();
    let mut start = |name: &str, i: usize, rate: u32, secs: f64| -> Result<()> {
        let out = dir.join(format!("probe-{name}-{i}.json"));
        let count = (f64::from(rate) * secs).round().max(1.0) as u64;
        let p = probe::start_sender_to(&s.ns_sub, hosts[i], ECHO, rate, count, out.clone())?;
        senders.push((p, out));
        Ok(())
    };
    for i in 0..hosts.len() {
        start("base", i, o.base_rate, d)?;
    }
    let surge_rate = ((o.factor - 1.0) * f64::from(o.base_rate)).round() as u32;
    let (surge_from, surge_to) = (SURGE_FROM * d, SURGE_TO * d);
    let flow_s = if o.flow_s > 0.0 {
        o.flow_s
    } else {
        surge_to - surge_from
    };
    // Start time of the next surge flow (of every group).
    let mut next_flow = if surge_rate == 0 {
        f64::INFINITY
    } else {
        surge_from
    };
    let mut flows = 0;
    let (vswitchd, controller) = (tb.vswitchd_pid(), tb.pid_of("controller"));
    let cpu0 = (
        vswitchd.and_then(sys::cpu_seconds),
        controller.and_then(sys::cpu_seconds),
        machine_busy(),
    );
    let mut snaps = Vec::new();
    let mut reports = BTreeMap::new();
    let mut next = t0;
    while t0.elapsed().as_secs_f64() < d + 2.0 {
        sys::check_interrupt()?;
        let t = t0.elapsed().as_secs_f64();
        if t >= next_flow && next_flow < surge_to {
            let secs = flow_s.min(surge_to - next_flow);
            for i in 0..hosts.len() {
                start(&format!("surge{flows}"), i, surge_rate, secs)?;
            }
            flows += 1;
            next_flow += flow_s;
        }
        if let Ok(status) = api.status() {
            fetch_reports(&api, &status, &mut reports);
            snaps.push(Snap { t_s: t, status });
        }
        next += INTERVAL;
        sys::sleep(next.saturating_duration_since(Instant::now()))?;
    }
    // Let the policy finish scaling in (at most another half run), sampling on.
    let settle = Instant::now() + Duration::from_secs_f64(d / 2.0);
    while Instant::now() < settle && !settled(snaps.last()) {
        sys::check_interrupt()?;
        if let Ok(status) = api.status() {
            fetch_reports(&api, &status, &mut reports);
            snaps.push(Snap {
                t_s: t0.elapsed().as_secs_f64(),
                status,
            });
        }
        sys::sleep(INTERVAL)?;
    }
    let wall = t0.elapsed();
    let cpu1 = (
        vswitchd.and_then(sys::cpu_seconds),
        controller.and_then(sys::cpu_seconds),
        machine_busy(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = Vec::new();
    for (p, out) in &mut senders {
        p.finish(deadline)?;
        records.push(probe::analyse(&probe::read_record(out)?, origin_ns));
    }
    let _ = echo.finish(Instant::now() + Duration::from_secs(1));
    if let Some(last) = snaps.last() {
        fetch_reports(&api, &last.status, &mut reports);
    }
    let migrations = migration_records(&snaps, &reports);
    let unreported = migrations.len() - reports.len().min(migrations.len());
    let samples = samples(&snaps, &records, capacity_of(e));
    let events = node_events(&snaps);
    let sent: u64 = records.iter().map(|r| r.sent).sum();
    let lost: u64 = records.iter().map(|r| r.lost).sum();
    let reordered: u64 = records.iter().map(|r| r.reordered).sum();
    let last = snaps.last().map(|s| &s.status);
    let node_cpu: BTreeMap<String, Value> = snaps
        .iter()
        .flat_map(|s| {
            s.status.nodes.iter().filter_map(|(k, n)| {
                let c = &n.status.as_ref()?.counters.cpu;
                Some((*k, c.process_us))
            })
        })
        .fold(BTreeMap::new(), |mut m, (k, us)| {
            m.insert(k, us);
            m
        })
        .into_iter()
        .map(|(k, us)| {
            let pct = us as f64 / 1e6 / wall.as_secs_f64() * 100.0;
            (format!("node{k}"), json!(round(pct, 1)))
        })
        .collect();
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => json!(round((b - a) / wall.as_secs_f64() * 100.0, 1)),
        _ => Value::Null,
    };
    let lost_migration: u64 = samples.iter().map(|s| s.lost_migration).sum();
    let max_in_service = samples.iter().map(|s| s.in_service).max().unwrap_or(0);
    let node_seconds: f64 = samples
        .iter()
        .map(|s| f64::from(s.in_service) * INTERVAL.as_secs_f64())
        .sum();
    let max_freeze = migrations
        .iter()
        .map(|m| m.max_freeze_ms)
        .fold(0.0, f64::max);
    let summary = json!({
        "scaling": "freeze-copy",
        "max_nodes_in_service": max_in_service,
        "nodes_in_service_at_end": samples.last().map_or(0, |s| s.in_service),
        "node_seconds": round(node_seconds, 1),
        "migrations": migrations.len(),
        "migrations_completed": migrations.iter().filter(|m| m.completed).count(),
        "states_moved": migrations.iter().map(|m| u64::from(m.states_moved)).sum::<u64>(),
        "states_expired_idle": migrations.iter().map(|m| u64::from(m.states_expired_idle)).sum::<u64>(),
        "max_freeze_ms": round(max_freeze, 3),
        "migrations_without_report": unreported,
        "lost_migration": lost_migration,
        "lost_overload": samples.iter().map(|s| s.lost_overload).sum::<u64>(),
        "probes_sent": sent,
        "probes_lost": lost,
        "probes_reordered": reordered,
        "capacity_pps": capacity_of(e),
        "cpu_pct": {
            "nodes": node_cpu,
            "ovs_vswitchd": pct(cpu0.0, cpu1.0),
            "controller": pct(cpu0.1, cpu1.1),
            "machine": machine_pct(cpu0.2, cpu1.2),
            "window_s": round(wall.as_secs_f64(), 1),
        },
    });
    print_table(&summary, &migrations, &samples);
    let plot = PlotRun {
        name: "freeze-copy (testbed)",
        samples: &samples,
        migrations: &migrations,
        interval_s: INTERVAL.as_secs_f64(),
        capacity_pps: capacity_of(e),
    };
    write_plots_of(&o.out, &[plot], "packets/s (2 per probe round trip)")?;
    Ok(json!({
        "experiment": "elastic",
        "backend": "testbed",
        "run": tb.state.run,
        "nodes": o.nodes,
        "groups": o.groups,
        "factor": o.factor,
        "duration_s": o.duration_s,
        "base_rate_per_group": o.base_rate,
        "surge_s": [round(SURGE_FROM * d, 1), round(SURGE_TO * d, 1)],
        "surge_flows_per_group": flows,
        "surge_flow_s": round(flow_s, 2),
        "summary": [summary],
        "runs": [{
            "samples": samples,
            "migrations": migrations,
            "node_events": events,
            "decisions": last.and_then(|s| s.autoscale.as_ref()).map(|a| &a.recent),
            "policy": last.and_then(|s| s.autoscale.as_ref()).map(|a| &a.counters),
        }],
    }))
}

fn capacity_of(e: &Elastic) -> f64 {
    e.capacity_pps as f64
}

/// Whether the policy is back to one node in service with nothing in flight.
fn settled(s: Option<&Snap>) -> bool {
    let Some(a) = s.and_then(|s| s.status.autoscale.as_ref()) else {
        return true;
    };
    let serving = a.nodes.iter().filter(|n| n.1 != NodeState::Standby).count();
    a.in_flight.is_none() && serving <= 1
}

/// The policy's state of node `k` at a snapshot.
fn state_of(s: &ClusterStatus, k: InstanceId) -> Option<NodeState> {
    let a = s.autoscale.as_ref()?;
    a.nodes.iter().find(|n| n.0 == k).map(|n| n.1)
}

fn samples(snaps: &[Snap], probes: &[probe::Analysis], capacity: f64) -> Vec<Sample> {
    let mut out = Vec::new();
    for w in snaps.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let dt = (b.t_s - a.t_s).max(1e-3);
        let (from_ms, to_ms) = (a.t_s * 1e3, b.t_s * 1e3);
        let in_bin = |ms: f64| ms >= from_ms && ms < to_ms;
        let sent: usize = probes
            .iter()
            .map(|p| {
                p.answers.iter().filter(|x| in_bin(x.sent_ms)).count()
                    + p.lost_ms.iter().filter(|&&ms| in_bin(ms)).count()
            })
            .sum();
        let back: usize = probes
            .iter()
            .map(|p| {
                let f = |x: &&probe::Answer| in_bin(x.sent_ms + x.rtt_ms);
                p.answers.iter().filter(f).count()
            })
            .sum();
        let lost: usize = probes
            .iter()
            .map(|p| p.lost_ms.iter().filter(|&&ms| in_bin(ms)).count())
            .sum();
        let (mut lost_migration, mut lost_overload) = (0, 0);
        let mut nodes = Vec::new();
        for (&k, e) in &b.status.nodes {
            let st = e.status.as_ref();
            let prev = a.status.nodes.get(&k).and_then(|e| e.status.as_ref());
            let same = |p: &&flowshift_control::api::NodeStatus| {
                st.is_some_and(|s| s.uptime_s > p.uptime_s)
            };
            let (mut pps, mut sessions) = (0.0, 0);
            if let (Some(s), Some(p)) = (st, prev.filter(same)) {
                let c = (&s.counters, &p.counters);
                pps = c.0.io.rx_packets.saturating_sub(c.1.io.rx_packets) as f64
                    / (s.uptime_s - p.uptime_s);
                lost_overload += c.0.io.rx_ring_drops.saturating_sub(c.1.io.rx_ring_drops);
                for (cause, v) in &c.0.losses {
                    lost_migration += v.saturating_sub(c.1.losses.get(cause).copied().unwrap_or(0));
                }
            }
            let owned: Vec<Ipv4Addr> = b
                .status
                .groups
                .iter()
                .filter(|g| g.owner == k)
                .map(|g| g.external)
                .collect();
            if let Some(s) = st {
                sessions = s
                    .groups
                    .iter()
                    .filter(|g| owned.contains(&g.external))
                    .map(|g| u64::from(g.sessions))
                    .sum();
            }
            let state = state_of(&b.status, k);
            let load = b
                .status
                .autoscale
                .as_ref()
                .and_then(|a| a.nodes.iter().find(|n| n.0 == k))
                .map_or(pps / capacity, |n| n.2);
            nodes.push(NodeSample {
                node: k,
                in_service: matches!(state, Some(NodeState::Active | NodeState::Draining)),
                state,
                pps,
                sessions,
                load,
                groups: owned.len() as u32,
                overload_drops: 0,
            });
        }
        out.push(Sample {
            t_s: b.t_s,
            in_service: nodes.iter().filter(|n| n.in_service).count() as u16,
            nodes,
            offered_pps: 2.0 * sent as f64 / dt,
            goodput_pps: 2.0 * back as f64 / dt,
            lost_overload,
            lost_migration,
            lost_other: lost as u64,
        });
    }
    out
}

/// Starts, entries into service and stops of nodes, from the policy's states.
fn node_events(snaps: &[Snap]) -> Vec<NodeEvent> {
    let mut v = Vec::new();
    for w in snaps.windows(2) {
        for &k in w[1].status.nodes.keys() {
            let (a, b) = (state_of(&w[0].status, k), state_of(&w[1].status, k));
            let what = match (a, b) {
                (Some(NodeState::Standby), Some(NodeState::Starting)) => "start_requested",
                (Some(NodeState::Standby | NodeState::Starting), Some(NodeState::Active)) => {
                    "in_service"
                }
                (Some(NodeState::Active | NodeState::Draining), Some(NodeState::Standby)) => {
                    "stopped"
                }
                _ => continue,
            };
            v.push(NodeEvent {
                t_s: w[1].t_s,
                node: k,
                what,
            });
        }
    }
    v
}

/// Fetches the source's report of every migration of `s` that ended and has none in
/// `reports` yet (by index in the controller's list).
fn fetch_reports(
    api: &flowshift_controller::ApiClient,
    s: &ClusterStatus,
    reports: &mut BTreeMap<usize, Value>,
) {
    for (i, m) in s.migrations.iter().enumerate() {
        let ended = matches!(m.stage, Stage::Done | Stage::Aborted);
        if ended
            && !reports.contains_key(&i)
            && let Ok(r) = api.report(i)
        {
            reports.insert(i, r);
        }
    }
}

/// The policy's migrations (the controller's list at the last snapshot), with each source's
/// report where one was fetched. The controller's clock is mapped onto the run's by its
/// uptime.
fn migration_records(snaps: &[Snap], reports: &BTreeMap<usize, Value>) -> Vec<MigrationRecord> {
    let Some(last) = snaps.last() else {
        return Vec::new();
    };
    let offset = last.t_s - last.status.uptime_s;
    let at = |i: flowshift_wire::Instant| offset + i.as_secs_f64();
    let mut v = Vec::new();
    for (i, m) in last.status.migrations.iter().enumerate() {
        let r = reports.get(&i).unwrap_or(&Value::Null);
        let n = |k: &str| r[k].as_u64().unwrap_or(0) as u32;
        let lost_by_cause = r["packets_lost_by_cause"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        v.push(MigrationRecord {
            external: Some(m.external),
            from: m.from,
            to: m.to,
            algorithm: Some(m.algorithm),
            requested_s: at(m.requested_at),
            ended_s: m.finished_at.map(at),
            completed: m.stage == Stage::Done,
            states_moved: n("states_transferred"),
            states_expired_idle: n("states_expired_idle"),
            mappings_at_start: n("mappings_at_start"),
            max_freeze_ms: r["max_freeze_ms"].as_f64().unwrap_or(0.0),
            halted_ms: 0.0,
            lost_by_cause,
            bytes: r["bytes_transferred"].as_u64().unwrap_or(0),
        });
    }
    v
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_busy() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Busy % of all cores between two [`machine_busy`] readings.
fn machine_pct(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b.1 > a.1 => {
            json!(round((b.0 - a.0) as f64 / (b.1 - a.1) as f64 * 100.0, 1))
        }
        _ => Value::Null,
    }
}

fn print_table(summary: &Value, migrations: &[MigrationRecord], samples: &[Sample]) {
    println!(
        "{}",
        serde_json::to_string_pretty(summary).unwrap_or_default()
    );
    print_migrations(migrations);
    println!(
        "{:>7} {:>6} {:>10} {:>10}  per-node load",
        "t_s", "nodes", "offered", "goodput"
    );
    for s in samples.iter().step_by(4) {
        let loads: Vec<String> = s
            .nodes
            .iter()
            .filter(|n| n.in_service)
            .map(|n| format!("n{}={:.2}", n.node, n.load))
            .collect();
        println!(
            "{:>7.1} {:>6} {:>10.0} {:>10.0}  {}",
            s.t_s,
            s.in_service,
            s.offered_pps,
            s.goodput_pps,
            loads.join(" ")
        );
    }
}
