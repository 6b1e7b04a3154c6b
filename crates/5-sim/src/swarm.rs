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

use crate::LinkId;
use crate::element::StaticRouter;
use crate::faults::FaultPlan;
use crate::host::{AppSpec, HostConfig};
use crate::link::LinkConfig;
use crate::nat_element::{NatElement, NatPorts};
use crate::packet::{ElementId, PacketMeta};
use crate::sim::{Sim, SimConfig, SimError};
use crate::switch::RuleSwitch;
use flowshift_control::orchestrator::{Command, Intervention, Orchestrator, StageTimeouts};
use flowshift_control::rules::{GroupRoute, InstancePort, Topology};
use flowshift_migration::{
    Algorithm, Instance, InstanceId, MigrationConfig, MigrationEvent, Params,
};
use flowshift_nat::{GroupConfig, GroupMode, Nat, NatConfig};
use flowshift_wire::Instant;
use rand::RngExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
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

impl World {
    fn set_links(&mut self) -> Result<(), SimError> {
        let [a, b] = self.alive;
        let want = [a, b, a && b, a && b && self.transfer_up];
        for (l, up) in self.links.into_iter().zip(want) {
            self.sim.set_link_up(l.0, up)?;
            self.sim.set_link_up(l.1, up)?;
        }
        Ok(())
    }

    fn with<R>(
        &mut self,
        on: InstanceId,
        f: impl FnOnce(&mut Instance<PacketMeta>, Instant) -> R,
    ) -> Result<Option<R>, String> {
        if !self.alive[idx(on)] {
            return Ok(None);
        }
        let now = self.sim.now();
        self.sim
            .poke::<NatElement, _>(self.nodes[idx(on)], |el, out| {
                let r = f(el.instance_mut(), now);
                el.flush(out);
                Some(r)
            })
            .map_err(err)
    }

    fn group_sessions(&self, on: InstanceId) -> u64 {
        let Some(el) = self.sim.element::<NatElement>(self.nodes[idx(on)]) else {
            return 0;
        };
        let nat = el.instance().nat();
        nat.group_id(EXTERNAL)
            .and_then(|g| nat.group_stats(g).ok())
            .map_or(0, |s| s.sessions as u64)
    }

    /// The controller/operator gives the group to `to` (see the module documentation).
    fn rehome(&mut self, to: InstanceId, lost: Option<u64>) -> Result<(), String> {
        let now = self.sim.now();
        if let Ok(r) = self.orch.rehome(now, EXTERNAL, to, lost) {
            self.sessions_lost += r.sessions_lost.unwrap_or(0);
        }
        self.commands()
    }

    fn act(&mut self, a: Action) -> Result<(), String> {
        match a {
            Action::Crash(x) => {
                self.alive[idx(x)] = false;
                self.set_links().map_err(err)?;
            }
            Action::Detect(x, at_once) => {
                if at_once && self.alive[idx(other(x))] {
                    let owner = self.orch.owner_of(EXTERNAL).unwrap_or(A);
                    let (to, lost) = if owner == x {
                        (other(x), Some(self.group_sessions(x)))
                    } else {
                        (owner, None)
                    };
                    self.rehome(to, lost)?;
                }
            }
            Action::Restart(x, at_once) => {
                let epoch: u32 = self.epochs.random();
                let nat = Nat::new(nat_config(vec![])).map_err(err)?;
                let inst = Instance::with_meta(x, nat, mig_config(epoch)).map_err(err)?;
                let lost = self.group_sessions(x);
                self.sim
                    .poke::<NatElement, _>(self.nodes[idx(x)], |el, out| el.restart(inst, out))
                    .map_err(err)?;
                self.alive[idx(x)] = true;
                self.set_links().map_err(err)?;
                // The owner is re-asserted: adopted by the restarted instance if it still owns
                // the group (its state is lost), otherwise confirmed at the survivor.
                let owner = self.orch.owner_of(EXTERNAL).unwrap_or(A);
                let lost = (owner == x && !at_once).then_some(lost);
                self.rehome(owner, lost)?;
            }
            Action::TransferDown => {
                self.transfer_up = false;
                self.set_links().map_err(err)?;
            }
            Action::TransferUp => {
                self.transfer_up = true;
                self.set_links().map_err(err)?;
            }
            Action::ControllerRestart => {
                let groups = self.orch.groups().to_vec();
                self.orch = Orchestrator::new(self.topo.clone(), groups).map_err(err)?;
                self.orch.set_timeouts(timeouts());
                self.generation += 1;
            }
        }
        Ok(())
    }

    fn commands(&mut self) -> Result<(), String> {
        let now = self.sim.now();
        while let Some(cmd) = self.orch.poll_command() {
            match cmd {
                Command::StartMigration(s) => {
                    let id = self
                        .with(s.on, |i, now| {
                            i.start_migration_at(
                                now,
                                s.external,
                                s.to,
                                s.algorithm,
                                params(s.algorithm),
                            )
                            .ok()
                        })?
                        .flatten();
                    self.orch.migration_started(now, s.external, id);
                }
                Command::UpdateSwitch { diff, token } => {
                    let t = self.generation << 32 | token;
                    self.sim
                        .poke::<RuleSwitch, _>(self.sw, |s, _| s.submit(now, diff, t))
                        .map_err(err)?;
                }
                Command::CutoverDone { on, migration } => {
                    self.with(on, |i, now| {
                        let _ = i.cutover_done(now, migration);
                    })?;
                }
            }
        }
        while let Some(iv) = self.orch.poll_intervention() {
            match iv {
                Intervention::Abort { on, migration } => {
                    self.with(on, |i, now| {
                        let _ = i.abort(now, migration);
                    })?;
                }
                Intervention::Adopt {
                    on,
                    external,
                    subscribers,
                } => {
                    let cfg = GroupConfig {
                        external,
                        subscribers,
                    };
                    self.with(on, |i, now| i.adopt_group(now, cfg).map(|_| ()))?
                        .transpose()
                        .map_err(err)?;
                }
                Intervention::Release { on, external } => {
                    let n = self.with(on, |i, now| i.release_group(now, external))?;
                    self.mappings_released += n.unwrap_or(0) as u64;
                }
            }
        }
        Ok(())
    }

    /// Feeds the instances' events and the switch's confirmations to the orchestrator.
    fn feedback(&mut self) -> Result<(), String> {
        for x in [A, B] {
            if !self.alive[idx(x)] {
                continue;
            }
            let evs = self
                .sim
                .poke::<NatElement, _>(self.nodes[idx(x)], |el, _| el.take_events())
                .map_err(err)?;
            for (at, e) in evs {
                self.orch.handle_instance_event(at, x, &e);
                // Either side may be the one that reports the split (a source that could not
                // revert, a committed destination whose source fell silent).
                if let MigrationEvent::Aborted { split: true, .. } = e {
                    // The operator resolves a split: the owner keeps the group.
                    let owner = self.orch.owner_of(EXTERNAL).unwrap_or(A);
                    self.rehome(owner, None)?;
                }
            }
        }
        let confirmed = self
            .sim
            .poke::<RuleSwitch, _>(self.sw, |s, _| s.take_confirmed())
            .map_err(err)?;
        let now = self.sim.now();
        for (t, _) in confirmed {
            if t >> 32 == self.generation {
                self.orch.handle_barrier(now, t & 0xffff_ffff);
            }
        }
        Ok(())
    }
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
    let mut sim = Sim::new(SimConfig {
        seed,
        goodput_bin: Duration::from_millis(100),
    });
    let mut epochs = sim.rng(7);
    let mut nat_a = Nat::new(nat_config(vec![group()])).map_err(err)?;
    let g = nat_a.group_id(EXTERNAL).ok_or("group missing")?;
    for chunk in flowshift_nat::record::fictive_records(FICTIVE, seed) {
        nat_a.import(g, Instant::ZERO, &chunk).map_err(err)?;
    }
    while nat_a.poll_event().is_some() {}
    let nat_b = Nat::new(nat_config(vec![])).map_err(err)?;
    let inst_a = Instance::with_meta(A, nat_a, mig_config(epochs.random())).map_err(err)?;
    let inst_b = Instance::with_meta(B, nat_b, mig_config(epochs.random())).map_err(err)?;
    let na = sim.add_element("nat-a", NatElement::new(inst_a, NatPorts::pair_to(B)));
    let nb = sim.add_element("nat-b", NatElement::new(inst_b, NatPorts::pair_to(A)));
    let port = |p: u32, mac: u8| InstancePort {
        port: p,
        mac: [2, 0, 0, 0, 0, mac],
    };
    let topo = Topology {
        inside_port: 1,
        outside_port: 2,
        instances: BTreeMap::from([(A, port(10, 0xa)), (B, port(11, 0xb))]),
    };
    let mut orch = Orchestrator::new(
        topo.clone(),
        vec![GroupRoute {
            external: EXTERNAL,
            subscribers: group().subscribers,
            owner: A,
        }],
    )
    .map_err(err)?;
    orch.set_timeouts(timeouts());
    let sw = sim.add_element(
        "switch",
        RuleSwitch::new(orch.table().to_vec(), plan.switch_delay),
    );
    let fast = LinkConfig::new(1_000_000_000, Duration::from_micros(20), 1_000_000);
    let client = |i: usize| Ipv4Addr::new(100, 64, 0, 1 + i as u8);
    let server = |i: usize| Ipv4Addr::new(198, 18, 0, 1 + i as u8);
    let mut inside = StaticRouter::new();
    let mut outside = StaticRouter::new();
    for i in 0..CLIENTS {
        inside.add_route(client(i), 32, 1 + i as u16);
    }
    outside.add_route(server(0), 32, 1);
    outside.add_route(server(1), 32, 2);
    let inside = inside.route(Ipv4Addr::UNSPECIFIED, 0, 0);
    let outside = outside.route(Ipv4Addr::UNSPECIFIED, 0, 0);
    let r_in = sim.add_element("inside-router", inside);
    let r_out = sim.add_element("outside-router", outside);
    let mut servers = Vec::new();
    for i in 0..2 {
        let s = sim
            .add_host(HostConfig::new(format!("srv{i}"), server(i)))
            .map_err(err)?;
        sim.connect((s, 0), (r_out, 1 + i as u16), fast.clone())
            .map_err(err)?;
        servers.push(s);
    }
    let mut rng = sim.rng(1);
    for i in 0..CLIENTS {
        let c = sim
            .add_host(HostConfig::new(format!("sub{i}"), client(i)))
            .map_err(err)?;
        sim.connect((c, 0), (r_in, 1 + i as u16), fast.clone())
            .map_err(err)?;
        let port = 7000 + i as u16;
        sim.add_app(servers[i % 2], AppSpec::UdpSink { port })
            .map_err(err)?;
        sim.add_app(
            c,
            AppSpec::UdpCbr {
                dst: SocketAddrV4::new(server(i % 2), port),
                payload_len: 100,
                interval: Duration::from_millis(2),
                start: Instant::ZERO + Duration::from_micros(rng.random_range(0..5_000)),
                stop: Instant::ZERO + TRAFFIC_STOP,
            },
        )
        .map_err(err)?;
    }
    sim.connect((r_in, 0), (sw, 1), fast.clone()).map_err(err)?;
    sim.connect((sw, 2), (r_out, 0), fast.clone())
        .map_err(err)?;
    let la = sim.connect((sw, 10), (na, 0), fast.clone()).map_err(err)?;
    let lb = sim.connect((sw, 11), (nb, 0), fast.clone()).map_err(err)?;
    let chain = sim.connect((na, 1), (nb, 1), fast.clone()).map_err(err)?;
    let transfer = LinkConfig::new(1_000_000_000, Duration::from_micros(50), 16 << 20)
        .with_loss(plan.transfer_loss)
        .with_reorder(plan.transfer_reorder, Duration::from_millis(1));
    let tl = sim.connect((na, 2), (nb, 2), transfer).map_err(err)?;

    let t0 = Instant::ZERO;
    let mut actions: Vec<(Instant, Action)> = Vec::new();
    for (x, c) in [(A, plan.source_crash), (B, plan.dest_crash)] {
        if let Some(c) = c {
            actions.push((t0 + c.at, Action::Crash(x)));
            actions.push((t0 + c.at + DETECT, Action::Detect(x, c.rehome_at_once)));
            actions.push((
                t0 + c.at + c.down_for.max(DETECT * 2),
                Action::Restart(x, c.rehome_at_once),
            ));
        }
    }
    if let Some((at, d)) = plan.transfer_reset {
        actions.push((t0 + at, Action::TransferDown));
        actions.push((t0 + at + d, Action::TransferUp));
    }
    if let Some(at) = plan.controller_restart {
        actions.push((t0 + at, Action::ControllerRestart));
    }
    actions.sort_by_key(|a| a.0);
    let mut w = World {
        sim,
        nodes: [na, nb],
        sw,
        links: [la, lb, chain, tl],
        alive: [true, true],
        transfer_up: true,
        orch,
        topo,
        generation: 0,
        epochs,
        sessions_lost: 0,
        mappings_released: 0,
    };
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
    check(w, seed, plan)
}

/// The end-of-run invariants (see the module documentation).
fn check(w: World, seed: u64, plan: FaultPlan) -> Result<SwarmRun, String> {
    let mut v = Vec::new();
    let report = w.sim.report();
    if let Err(e) = report.check() {
        v.push(format!("ledger: {e}"));
    }
    let el = |x: InstanceId| -> Result<&NatElement, String> {
        w.sim
            .element::<NatElement>(w.nodes[idx(x)])
            .ok_or_else(|| "nat element missing".to_string())
    };
    let (ea, eb) = (el(A)?, el(B)?);
    let owner = w.orch.owner_of(EXTERNAL).unwrap_or(A);
    let mut held: [BTreeMap<(u8, u16), (SocketAddrV4, bool)>; 2] = Default::default();
    let mut in_doubt = 0u64;
    for (x, e) in [(A, ea), (B, eb)] {
        let inst = e.instance();
        let nat = inst.nat();
        if let Err(e) = nat.check_invariants() {
            v.push(format!("nat {x:?}: {e}"));
        }
        for (id, _, phase) in inst.migrations() {
            if !matches!(
                phase,
                flowshift_migration::Phase::Done | flowshift_migration::Phase::Aborted
            ) {
                v.push(format!(
                    "instance {x:?}: migration {id:?} still in {phase:?}"
                ));
            }
            in_doubt += inst.report(id).map_or(0, |r| r.in_doubt_mappings as u64);
        }
        if inst.counters().internal_errors > 0 {
            v.push(format!(
                "instance {x:?}: {} internal errors",
                inst.counters().internal_errors
            ));
        }
        let Some(g) = nat.group_id(EXTERNAL) else {
            if x == owner {
                v.push(format!("owner {x:?} has no group"));
            }
            continue;
        };
        let mode = nat.group_mode(g).map_err(err)?;
        let stats = nat.group_stats(g).map_err(err)?;
        if x == owner && mode != GroupMode::Active {
            v.push(format!("owner {x:?} serves the group {mode:?}"));
        }
        if x != owner && stats.mappings > 0 {
            v.push(format!("non-owner {x:?} holds {} mappings", stats.mappings));
        }
        held[idx(x)] = nat
            .group_mappings(g)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| nat.mapping_info(id).ok())
            .map(|m| ((m.proto, m.external_port), (m.internal, m.frozen)))
            .collect();
    }
    let mut replicas = 0u64;
    for (k, (ia, frozen)) in &held[0] {
        match held[1].get(k) {
            Some((ib, _)) if ib != ia => {
                v.push(format!("port {}/{} maps {ia} on A and {ib} on B", k.0, k.1))
            }
            Some(_) if !frozen => replicas += 1,
            _ => {}
        }
    }
    if replicas > in_doubt {
        v.push(format!(
            "{replicas} mappings on both, {in_doubt} reported in doubt"
        ));
    }
    let stages: Vec<String> = w
        .orch
        .migrations()
        .iter()
        .map(|m| m.stage.as_str().to_string())
        .collect();
    if w.orch
        .migrations()
        .iter()
        .any(|m| !matches!(m.stage.as_str(), "done" | "aborted"))
    {
        v.push(format!("controller: migration not finished: {stages:?}"));
    }
    let drops: BTreeMap<String, u64> = report.ledger.dropped.clone();
    let costly = plan.crashes() || plan.transfer_reset.is_some();
    if !costly {
        for (cause, n) in &drops {
            let ok = cause == "injected_loss"
                || (algorithm_halts(&plan) && cause == "element:group_halted");
            if *n > 0 && !ok {
                v.push(format!(
                    "{n} packets lost ({cause}) without a fault that explains it"
                ));
            }
        }
    }
    Ok(SwarmRun {
        seed,
        plan,
        violations: v,
        owner: owner.0,
        stages,
        sessions_lost: w.sessions_lost,
        mappings_released: w.mappings_released,
        drops,
        events: report.events,
    })
}

fn algorithm_halts(plan: &FaultPlan) -> bool {
    matches!(
        plan.algorithm,
        Some(Algorithm::StopCopy | Algorithm::PreCopy)
    )
}
