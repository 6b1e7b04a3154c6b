//! `flowshift experiment wan --testbed`: the simulator's wide-area sweep on real packets.
//!
//! Per RTT and algorithm, a fresh testbed (2 nodes, `--states` pre-loaded on group 198.18.0.1
//! of node 1, server link not shaped) with node 2 behind the wide-area link ([`super::wan`]:
//! RTT and `--rate-mbps` on its management interface, which carries the state transfer). The
//! probe stream ([`probe`], `--probe-rate` per second from a subscriber of group 1 to the
//! echo on the server side) runs throughout; after 2 s the group moves to node 2 through the
//! controller's API with the testbed's migration parameters ([`super::exp::params`]).
//! Reported per run, in the simulator report's shape: longest freeze and halt (the source's
//! report), packets the nodes counted as lost to the migration, the probes lost (all, and from
//! the request to 1 s after done) and reordered, the migration's duration (request to done as
//! the controller saw it, wall clock), batches, and the delay line's counters.

use super::bed::{Testbed, UpOptions};
use super::exp_measure::{counters_of, node_deltas, round, unix_now_ns};
use super::{layout, probe, sys, wan};
use anyhow::{Context, Result, bail};
use flowshift_control::api::MigrateRequest;
use flowshift_control::orchestrator::Stage;
use flowshift_migration::Algorithm;
use serde_json::{Value, json};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// When the migration starts (s after the probe stream).
const MIGRATE_AT_S: f64 = 2.0;
/// Probe stream after the estimated end of the migration (s).
const TAIL_S: f64 = 2.0;

/// What `experiment wan --testbed` runs.
#[derive(Clone, Debug)]
pub struct WanTestbedArgs {
    /// Round-trip times (ms).
    pub rtt_ms: Vec<f64>,
    /// Rate of the link (Mbit/s).
    pub rate_mbps: f64,
    /// States pre-loaded on the migrated group.
    pub states: u32,
    /// Algorithms, each on a fresh testbed per RTT.
    pub algorithms: Vec<Algorithm>,
    /// Seed of the pre-loaded states.
    pub seed: u64,
    /// Probes per second.
    pub probe_rate: u32,
}

/// Runs every (RTT, algorithm) pair; one JSON row each (see the module documentation).
pub fn run(a: &WanTestbedArgs) -> Result<Vec<Value>> {
    super::bed::require_root("`flowshift experiment wan --testbed`")?;
    sys::catch_interrupts();
    if a.probe_rate == 0 || a.probe_rate > 10_000 {
        bail!("--probe-rate must be 1..=10000");
    }
    let mut rows = Vec::new();
    for &rtt in &a.rtt_ms {
        for &alg in &a.algorithms {
            sys::check_interrupt()?;
            let wall = Instant::now();
            let row = run_one(a, rtt, alg)
                .with_context(|| format!("{} at {rtt} ms", crate::report::algorithm_name(alg)))?;
            eprintln!(
                "wan --testbed: {} at {rtt} ms done in {:.1} s",
                crate::report::algorithm_name(alg),
                wall.elapsed().as_secs_f64()
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

fn run_one(a: &WanTestbedArgs, rtt: f64, alg: Algorithm) -> Result<Value> {
    let link = wan::WanLink {
        node: 2,
        rtt_ms: rtt,
        rate_mbit: a.rate_mbps,
    };
    link.validate()?;
    let tb = Testbed::up(&UpOptions {
        nodes: 2,
        preload: a.states,
        seed: a.seed,
        tso: false,
        filtering: "endpoint-independent".into(),
        link_rate_bps: None,
        switch_tls: false,
        verbose: false,
        wan: Some(link),
        elastic: None,
    })?;
    let api = tb.state.api_client()?;
    let dir = tb.state.dir.clone();
    let (sub, srv) = (tb.state.ns_sub.clone(), tb.state.ns_srv.clone());
    // The probe stream outlasts the migration's estimate: serialization of ~30 bytes per
    // state, one round trip per batch of 512, the idle phase's 0.5 s at most.
    let batches = f64::from(a.states) / 512.0 + 4.0;
    let est_s = f64::from(a.states) * 30.0 * 8.0 / (a.rate_mbps * 1e6) + batches * rtt / 1e3 + 1.0;
    let duration = MIGRATE_AT_S + 1.5 * est_s + TAIL_S;
    let probe_to = SocketAddrV4::new(layout::SERVERS[1], layout::PROBE_PORT);
    let mut echo = probe::start_echo(&srv, probe_to, duration + 30.0, &dir)?;
    let before = api.status()?;
    let t0 = Instant::now();
    let wall0_ns = unix_now_ns();
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
    let count = (f64::from(a.probe_rate) * duration).round() as u64;
    let mut prober = probe::start_sender(
        &sub,
        layout::subscriber(1, layout::SUBSCRIBER_HOSTS),
        probe_to,
        a.probe_rate,
        count,
        &dir,
    )?;
    let at = t0 + Duration::from_secs_f64(MIGRATE_AT_S);
    while Instant::now() < at {
        tb.check_processes()?;
        sys::sleep(Duration::from_millis(20).min(at - Instant::now()))?;
    }
    let req = MigrateRequest {
        group: layout::group_external(1),
        to: flowshift_migration::InstanceId(2),
        algorithm: alg,
        params: Some(super::exp::params(alg)),
    };
    let t_req = Instant::now();
    let deadline = t_req + Duration::from_secs_f64(60.0 + 4.0 * est_s);
    let (index, status) = super::exp::migrate_and_wait(&tb, &api, &req, deadline)?;
    let t_done = Instant::now();
    let end = t0 + Duration::from_secs_f64(duration + 15.0);
    let (rec, after) = super::exp::end_probes(&mut prober, &mut echo, &api, end)?;
    let report = api.report(index).unwrap_or(Value::Null);
    let relay = wan::relay_stats(&tb, 2);
    tb.down()?;

    let (req_ms, done_ms) = (ms(t_req), ms(t_done));
    let pa = probe::analyse(&rec, wall0_ns);
    let lost_migration = pa
        .lost_ms
        .iter()
        .filter(|&&t| t >= req_ms && t <= done_ms + 1000.0)
        .count();
    let d = node_deltas(&counters_of(&before), &counters_of(&after));
    let lost: u64 = d.lost_by_cause.values().sum();
    let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
    Ok(json!({
        "rtt_ms": rtt,
        "rate_mbps": a.rate_mbps,
        "algorithm": crate::report::algorithm_name(alg),
        "completed": status.stage == Stage::Done && report["completed"].as_bool() == Some(true),
        "max_freeze_ms": round(f("max_freeze_ms"), 3),
        "halted_ms": round(f("halted_ms"), 3),
        "packets_lost": lost,
        "lost_by_cause": d.lost_by_cause,
        "node_drops": d.drops,
        "migration_ms": round(done_ms - req_ms, 1),
        "batches": report["batches"].as_u64().unwrap_or(0),
        "states_transferred": report["states_transferred"].as_u64().unwrap_or(0),
        "bytes_transferred": report["bytes_transferred"].as_u64().unwrap_or(0),
        "probe": {
            "rate_per_s": a.probe_rate,
            "sent": pa.sent,
            "lost": pa.lost,
            "lost_during_migration": lost_migration,
            "reordered": pa.reordered,
            "reordered_forward": pa.reordered_forward,
            "reordered_return": pa.reordered_return,
        },
        "wan_link": link,
        "delay_line": relay,
        "source_report": report,
    }))
}
