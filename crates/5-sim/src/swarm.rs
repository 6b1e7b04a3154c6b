//! The fault swarm: a small cluster (subscribers, a rule switch, NAT instances A and B, the
//! real [`Orchestrator`]) migrating one group from A to B under the faults of a
//! [`FaultPlan`] drawn from the seed, checked from outside at the end of every run.
//!
//! The driver here plays the controller daemon and its operator: it carries out the
//! orchestrator's commands and interventions, notices a crash `DETECT` after it happens, and
//! resolves what the orchestrator leaves to an operator: a dead owner's group is rehomed
//! (`rehome`, to the survivor at once or back to the restarted owner, as the plan says), and a
//! group a failed migration left split (an `Aborted` event with `split`, from either side) is
//! given back to its owner (`rehome` to the owner: the other instance's part is released and
//! counted as lost).
//!
//! Invariants ([`SwarmRun::violations`]): every packet accounted for (the ledger); both NATs'
//! tables consistent; no external port bound on both instances to different endpoints and no
//! mapping served by both beyond those reported in doubt; the run settles (no migration left
//! running, the owner serves the group `Active`, the other instance holds none of it, no
//! group left `Draining`); and no packet lost unless the plan injected a fault that may cost
//! packets (a crash, a transfer reset) or the algorithm halts the group (stop-copy, pre-copy:
//! only `group_halted` drops).

mod build;
mod check;
mod world;

use crate::LinkId;
use crate::faults::FaultPlan;
use crate::packet::ElementId;
use crate::sim::Sim;
use flowshift_control::orchestrator::{Orchestrator, StageTimeouts};
use flowshift_control::rules::Topology;
use flowshift_migration::{Algorithm, InstanceId, MigrationConfig, Params};
use flowshift_nat::{GroupConfig, NatConfig};
use flowshift_wire::Instant;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

const A: InstanceId = InstanceId(0);
const B: InstanceId = InstanceId(1);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const CLIENTS: usize = 4;
/// Fictive states pre-loaded on A.
const FICTIVE: u32 = 300;
const STEP: Duration = Duration::from_millis(1);
/// How long the controller takes to notice a crash.
const DETECT: Duration = Duration::from_millis(10);
const MIGRATE_AT: Duration = Duration::from_millis(100);
const FAULTS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_millis(300));
const TRAFFIC_STOP: Duration = Duration::from_millis(2200);
const END: Duration = Duration::from_millis(2500);

/// One run's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct SwarmRun {
    /// The seed.
    pub seed: u64,
    /// The faults it drew.
    pub plan: FaultPlan,
    /// Invariants that failed (empty: the run is clean).
    pub violations: Vec<String>,
    /// Who owns the group at the end.
    pub owner: u16,
    /// The orchestrator's final stage of each migration it knows.
    pub stages: Vec<String>,
    /// Sessions lost with dead owners (sum of the rehomes' known counts).
    pub sessions_lost: u64,
    /// Mappings dropped by `release_group` (a split resolved, a dead party's leftovers).
    pub mappings_released: u64,
    /// Packets dropped, by cause.
    pub drops: BTreeMap<String, u64>,
    /// Simulated events.
    pub events: u64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn group() -> GroupConfig {
    GroupConfig {
        external: EXTERNAL,
        subscribers: "100.64.0.0/16".parse().expect("prefix"),
    }
}

fn nat_config(groups: Vec<GroupConfig>) -> NatConfig {
    NatConfig {
        groups,
        max_sessions: 8192,
        max_mappings: 8192,
        ..NatConfig::default()
    }
}

/// Short timeouts, so that every recovery path finishes within a run.
fn mig_config(epoch: u32) -> MigrationConfig {
    MigrationConfig {
        report_drops: true,
        rto_initial: Duration::from_millis(5),
        rto_max: Duration::from_millis(40),
        max_retries: 6,
        keepalive: Duration::from_millis(30),
        peer_timeout: Duration::from_millis(300),
        prepare_timeout: Duration::from_millis(200),
        cutover_timeout: Duration::from_millis(100),
        cutover_hold_max: Duration::from_millis(50),
        chain_idle_release: Duration::from_millis(20),
        ..MigrationConfig::default()
    }
    .with_epoch(epoch)
}

fn params(algorithm: Algorithm) -> Params {
    Params {
        batch_size: 64,
        batches_in_flight: if algorithm == Algorithm::FreezeCopy {
            1
        } else {
            4
        },
        idle_sample_interval: Duration::from_millis(10),
        idle_window_samples: 3,
        idle_max: Duration::from_millis(50),
        drain: Duration::from_millis(5),
        chain_quiet: Duration::from_millis(2),
        ..Params::default()
    }
}

/// What happens at a time of the run.
#[derive(Clone, Copy, Debug)]
enum Action {
    Crash(InstanceId),
    Detect(InstanceId, bool),
    Restart(InstanceId, bool),
    TransferDown,
    TransferUp,
    ControllerRestart,
}

struct World {
    sim: Sim,
    nodes: [ElementId; 2],
    sw: ElementId,
    /// Links of A (switch), B (switch), the chain and the transfer path (both directions).
    links: [(LinkId, LinkId); 4],
    alive: [bool; 2],
    transfer_up: bool,
    orch: Orchestrator,
    topo: Topology,
    /// Controller generation: barrier tokens of an earlier one are ignored.
    generation: u64,
    epochs: rand_chacha::ChaCha8Rng,
    sessions_lost: u64,
    mappings_released: u64,
}

fn idx(i: InstanceId) -> usize {
    i.0 as usize
}

fn other(i: InstanceId) -> InstanceId {
    if i == A { B } else { A }
}

fn timeouts() -> StageTimeouts {
    StageTimeouts {
        requested_ms: 100,
        running_ms: 600,
        abort_grace_ms: 300,
        redirecting_ms: 150,
        redirect_retries: 2,
        draining_ms: 300,
    }
}

/// Runs the swarm scenario for `seed` (faults drawn with [`FaultPlan::draw`]).
pub fn run(seed: u64) -> Result<SwarmRun, String> {
    run_plan(seed, FaultPlan::draw(seed, FAULTS))
}

/// Runs the swarm scenario for `seed` with the given faults.
pub fn run_plan(seed: u64, plan: FaultPlan) -> Result<SwarmRun, String> {
    let algorithm = plan.algorithm.unwrap_or(Algorithm::FreezeCopy);
    let mut w = build::world(seed, &plan)?;
    let t0 = Instant::ZERO;
    let actions = build::schedule(t0, &plan);
    let mut next = 0;
    let mut requested = false;
    let end = t0 + END;
    while w.sim.now() < end {
        let now = w.sim.now();
        while next < actions.len() && actions[next].0 <= now {
            w.act(actions[next].1)?;
            next += 1;
        }
        if !requested && now >= t0 + MIGRATE_AT {
            requested = true;
            // Refused if a crash already moved the group: nothing to migrate then.
            let _ = w.orch.request_migration(now, EXTERNAL, B, algorithm);
        }
        w.commands()?;
        w.sim.run_until(now + STEP);
        w.feedback()?;
        let now = w.sim.now();
        if w.orch.next_timeout() <= now {
            w.orch.handle_timeout(now);
        }
        w.commands()?;
    }
    check::check(w, seed, plan)
}
