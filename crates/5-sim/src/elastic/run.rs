//! The elastic scenario's driver: builds the cluster, then steps the simulator and carries
//! out what the policy and the orchestrator ask (see the module documentation of `elastic`).

use super::traffic::{Servers, Subscribers};
use super::*;
use crate::nat_element::{NatElement, NatPorts};
use crate::packet::{DropCause, ElementId};
use crate::sim::{Sim, SimConfig};
use crate::switch::RuleSwitch;
use flowshift_control::autoscale::{Action, Autoscaler, GroupLoad, NodeLoad};
use flowshift_control::orchestrator::{Command, Orchestrator};
use flowshift_control::rules::{GroupRoute, InstancePort, Topology};
use flowshift_migration::{
    Instance, InstanceId, LossCause, MigrationConfig, MigrationEvent, MigrationId, MigrationReport,
    Role,
};
use flowshift_nat::{GroupConfig, Nat, NatConfig};
use flowshift_wire::Instant;
use std::cell::RefCell;
use std::rc::Rc;

const SW_INSIDE: u16 = 1;
const SW_OUTSIDE: u16 = 2;
const SW_NODE0: u16 = 10;

/// Drops per interval: (overload, migration, other).
type DropBins = Rc<RefCell<Vec<[u64; 3]>>>;

struct Node {
    el: ElementId,
    in_service: bool,
    /// Counters at the last load report: packets offered, overload drops, per group.
    last_in: u64,
    last_overload: u64,
    last_groups: BTreeMap<Ipv4Addr, u64>,
}

fn secs(t: Instant) -> f64 {
    t.as_secs_f64()
}

fn add_report(rec: &mut MigrationRecord, r: &MigrationReport) {
    if r.role == Role::Source {
        rec.states_moved = r.states_transferred;
        rec.states_expired_idle = r.states_expired_idle;
        rec.mappings_at_start = r.mappings_at_start;
        rec.max_freeze_ms = r.max_freeze_ms;
        rec.halted_ms = r.halted_ms;
        rec.bytes = r.bytes_transferred;
    }
    for (c, n) in &r.packets_lost_by_cause {
        *rec.lost_by_cause.entry(c.to_string()).or_default() += n;
    }
}

/// Runs the scenario. `progress` receives the virtual time reached (seconds), now and then.
pub fn run(cfg: &ElasticConfig, progress: &mut dyn FnMut(f64)) -> Result<ElasticRun, ElasticError> {
    let n = cfg.nodes;
    if n == 0 || n > MAX_NODES || cfg.active_at_start == 0 || cfg.active_at_start > n {
        return Err(ElasticError::Config(format!(
            "need 1..={MAX_NODES} nodes and 1..=nodes in service at start"
        )));
    }
    if cfg.load_interval.is_zero() || cfg.control_step.is_zero() || cfg.capacity.pps <= 0.0 {
        return Err(ElasticError::Config(
            "load_interval, control_step and capacity must be positive".into(),
        ));
    }
    let groups: Vec<GroupConfig> =
        flowshift_nat::group_layout(cfg.pool, cfg.subscribers, cfg.groups).map_err(cfg_err)?;
    let owner0 = |i: usize| InstanceId((i % cfg.active_at_start as usize) as u16);
    let mut sim = Sim::new(SimConfig {
        seed: cfg.seed,
        goodput_bin: cfg.load_interval,
    });

    // Nodes: each starts with the groups it owns (standby nodes with none).
    let max_sessions = 1 << 20;
    let mcfg = MigrationConfig {
        report_drops: true,
        cutover_hold_max: Duration::from_millis(200),
        ..MigrationConfig::default()
    };
    let chain_port = |peer: u16| 1 + peer;
    let transfer_port = |peer: u16| 1 + MAX_NODES + peer;
    let mut nodes = Vec::new();
    for id in 0..n {
        let own: Vec<GroupConfig> = groups
            .iter()
            .enumerate()
            .filter(|(i, _)| owner0(*i) == InstanceId(id))
            .map(|(_, g)| g.clone())
            .collect();
        let nat = Nat::new(NatConfig {
            groups: own,
            max_sessions,
            max_mappings: max_sessions,
            rng_seed: cfg.seed.wrapping_add(u64::from(id)),
            ..NatConfig::default()
        })
        .map_err(cfg_err)?;
        let inst = Instance::with_meta(InstanceId(id), nat, mcfg.clone()).map_err(cfg_err)?;
        let peers = (0..n).filter(|&p| p != id);
        let ports = NatPorts {
            switch: 0,
            chain: peers
                .clone()
                .map(|p| (InstanceId(p), chain_port(p)))
                .collect(),
            transfer: peers.map(|p| (InstanceId(p), transfer_port(p))).collect(),
        };
        let el = NatElement::new(inst, ports)
            .with_capacity(cfg.capacity)
            .count_groups(groups.clone());
        nodes.push(Node {
            el: sim.add_element(format!("node-{id}"), el),
            in_service: id < cfg.active_at_start,
            last_in: 0,
            last_overload: 0,
            last_groups: BTreeMap::new(),
        });
    }

    // Switch and orchestrator.
    let topo = Topology {
        inside_port: SW_INSIDE as u32,
        outside_port: SW_OUTSIDE as u32,
        instances: (0..n)
            .map(|id| {
                let port = InstancePort {
                    port: u32::from(SW_NODE0 + id),
                    mac: [2, 0, 0, 0, 1, id as u8],
                };
                (InstanceId(id), port)
            })
            .collect(),
    };
    let routes = groups
        .iter()
        .enumerate()
        .map(|(i, g)| GroupRoute {
            external: g.external,
            subscribers: g.subscribers,
            owner: owner0(i),
        })
        .collect();
    let mut orch = Orchestrator::new(topo, routes).map_err(cfg_err)?;
    let sw = sim.add_element(
        "switch",
        RuleSwitch::new(orch.table().to_vec(), cfg.switch_update_delay),
    );

    // Ends, links.
    let prefixes: Vec<Ipv4Net> = groups.iter().map(|g| g.subscribers).collect();
    let subs = Subscribers::new(
        cfg.traffic.clone(),
        &prefixes,
        cfg.load_interval,
        sim.rng(1),
    );
    let subs = sim.add_element("subscribers", subs);
    let servers = sim.add_element("servers", Servers::new(cfg.load_interval));
    let fast = crate::link::LinkConfig::new(10_000_000_000, Duration::from_micros(50), 1 << 20);
    sim.connect((subs, 0), (sw, SW_INSIDE), fast.clone())
        .map_err(cfg_err)?;
    sim.connect((servers, 0), (sw, SW_OUTSIDE), fast.clone())
        .map_err(cfg_err)?;
    let transfer = crate::link::LinkConfig::new(cfg.transfer_bps, cfg.transfer_delay, 64 << 20);
    for a in 0..n {
        sim.connect((nodes[a as usize].el, 0), (sw, SW_NODE0 + a), fast.clone())
            .map_err(cfg_err)?;
        for b in a + 1..n {
            let (ea, eb) = (nodes[a as usize].el, nodes[b as usize].el);
            sim.connect((ea, chain_port(b)), (eb, chain_port(a)), fast.clone())
                .map_err(cfg_err)?;
            sim.connect(
                (ea, transfer_port(b)),
                (eb, transfer_port(a)),
                transfer.clone(),
            )
            .map_err(cfg_err)?;
        }
    }

    // Drops per interval, by class.
    let migration_labels: Vec<&'static str> = LossCause::ALL
        .iter()
        .map(|c| c.drop_reason().label())
        .collect();
    let bins: DropBins = Rc::new(RefCell::new(Vec::new()));
    {
        let bins = bins.clone();
        let width = cfg.load_interval.as_nanos().max(1) as u64;
        sim.set_drop_observer(move |d| {
            let class = match d.cause {
                DropCause::Element("node_overload") => 0,
                DropCause::Element(l) if migration_labels.contains(&l) => 1,
                _ => 2,
            };
            let i = (d.now.as_nanos() / width) as usize;
            let mut b = bins.borrow_mut();
            if b.len() <= i {
                b.resize(i + 1, [0; 3]);
            }
            b[i][class] += 1;
        });
    }

    // The policy.
    let mut acfg = cfg.autoscale.clone();
    acfg.enabled = cfg.scaling.algorithm().is_some();
    if let Some(a) = cfg.scaling.algorithm() {
        acfg.algorithm = a;
    }
    let active: Vec<InstanceId> = (0..cfg.active_at_start).map(InstanceId).collect();
    let standby: Vec<InstanceId> = (cfg.active_at_start..n).map(InstanceId).collect();
    let mut policy = Autoscaler::new(acfg, &active, &standby).map_err(ElasticError::Config)?;

    // Run.
    let end = Instant::ZERO + cfg.duration;
    let mut samples = Vec::new();
    let mut migrations: Vec<MigrationRecord> = Vec::new();
    let mut by_id: BTreeMap<MigrationId, usize> = BTreeMap::new();
    let mut node_events = Vec::new();
    let mut decisions = Vec::new();
    let mut starting: Vec<(Instant, InstanceId)> = Vec::new();
    let mut next_load = Instant::ZERO + cfg.load_interval;
    let mut next_progress = 0.0;
    while sim.now() < end {
        let now = sim.now();
        if now >= next_load {
            next_load = now + cfg.load_interval;
            let dt = cfg.load_interval.as_secs_f64();
            let mut loads = Vec::new();
            let mut sample_nodes = Vec::new();
            for (id, node) in nodes.iter_mut().enumerate() {
                let id = InstanceId(id as u16);
                let el: &NatElement = sim
                    .element(node.el)
                    .ok_or_else(|| ElasticError::Config("node missing".into()))?;
                let (pin, over) = (el.stats().packets_in, el.stats().overload_drops);
                let pps = (pin - node.last_in) as f64 / dt;
                let over_d = over - node.last_overload;
                node.last_in = pin;
                node.last_overload = over;
                let nat = el.instance().nat();
                let mut gl = Vec::new();
                let mut sessions = 0u64;
                for (ext, count) in el.group_packets() {
                    let last = node.last_groups.insert(ext, count).unwrap_or(0);
                    if orch.owner_of(ext) != Some(id) {
                        continue;
                    }
                    let s = nat
                        .group_id(ext)
                        .and_then(|g| nat.group_stats(g).ok())
                        .map_or(0, |s| u64::from(s.sessions));
                    sessions += s;
                    gl.push(GroupLoad {
                        external: ext,
                        pps: (count - last) as f64 / dt,
                        sessions: s,
                    });
                }
                let load = NodeLoad {
                    node: id,
                    pps,
                    sessions,
                    busy: 0.0,
                    groups: gl,
                };
                sample_nodes.push(NodeSample {
                    node: id,
                    in_service: node.in_service,
                    state: policy.node_state(id),
                    pps,
                    sessions,
                    load: policy.node_load(&load),
                    groups: load.groups.len() as u32,
                    overload_drops: over_d,
                });
                if node.in_service {
                    loads.push(load);
                }
            }
            policy.handle_load(now, &loads);
            let i = (now.as_nanos() / cfg.load_interval.as_nanos().max(1) as u64) as usize;
            let [lo, lm, lx] = bins
                .borrow()
                .get(i.wrapping_sub(1))
                .copied()
                .unwrap_or([0; 3]);
            samples.push(Sample {
                t_s: secs(now),
                in_service: nodes.iter().filter(|n| n.in_service).count() as u16,
                nodes: sample_nodes,
                offered_pps: 0.0,
                goodput_pps: 0.0,
                lost_overload: lo,
                lost_migration: lm,
                lost_other: lx,
            });
        }
        // Nodes coming into service.
        while let Some(i) = starting.iter().position(|&(t, _)| t <= now) {
            let (_, id) = starting.swap_remove(i);
            nodes[usize::from(id.0)].in_service = true;
            node_events.push(NodeEvent {
                t_s: secs(now),
                node: id,
                what: "in_service",
            });
            policy.handle_node_ready(now, id);
        }
        // The policy's actions.
        while let Some(a) = policy.poll_action() {
            if let Some(d) = policy.status().recent.iter().rev().find(|d| d.action == a) {
                decisions.push(d.clone());
            }
            match a {
                Action::StartNode { node } => {
                    starting.push((now + cfg.start_delay, node));
                    node_events.push(NodeEvent {
                        t_s: secs(now),
                        node,
                        what: "start_requested",
                    });
                }
                Action::StopNode { node } => {
                    if let Some(x) = nodes.get_mut(usize::from(node.0)) {
                        x.in_service = false;
                    }
                    node_events.push(NodeEvent {
                        t_s: secs(now),
                        node,
                        what: "stopped",
                    });
                }
                Action::Migrate {
                    external,
                    from,
                    to,
                    algorithm,
                } => {
                    migrations.push(MigrationRecord {
                        external: Some(external),
                        from,
                        to,
                        algorithm: Some(algorithm),
                        requested_s: secs(now),
                        ..MigrationRecord::default()
                    });
                    if orch
                        .request_migration(now, external, to, algorithm)
                        .is_err()
                    {
                        migrations.last_mut().expect("pushed").ended_s = Some(secs(now));
                        policy.handle_migration_done(now, external, false);
                    }
                }
            }
        }
        // The orchestrator's commands.
        while let Some(cmd) = orch.poll_command() {
            match cmd {
                Command::StartMigration(s) => {
                    let external = s.external;
                    let params = cfg.params.clone();
                    let id = sim
                        .poke::<NatElement, _>(nodes[usize::from(s.on.0)].el, |el, out| {
                            el.start_migration(out, &s, params)
                        })
                        .map_err(cfg_err)?;
                    orch.migration_started(now, external, id);
                    let rec = migrations
                        .iter()
                        .rposition(|m| m.external == Some(external) && m.ended_s.is_none());
                    match (id, rec) {
                        (Some(id), Some(r)) => {
                            by_id.insert(id, r);
                        }
                        (None, Some(r)) => {
                            migrations[r].ended_s = Some(secs(now));
                            policy.handle_migration_done(now, external, false);
                        }
                        _ => {}
                    }
                }
                Command::UpdateSwitch { diff, token } => {
                    sim.poke::<RuleSwitch, _>(sw, |s, _| s.submit(now, diff, token))
                        .map_err(cfg_err)?;
                }
                Command::CutoverDone { on, migration } => {
                    sim.poke::<NatElement, _>(nodes[on.0 as usize].el, |el, out| {
                        let _ = el.instance_mut().cutover_done(now, migration);
                        el.flush(out);
                    })
                    .map_err(cfg_err)?;
                }
            }
        }
        sim.run_until((now + cfg.control_step).min(end));
        for (id, node) in nodes.iter().enumerate() {
            let evs = sim
                .poke::<NatElement, _>(node.el, |el, _| {
                    let evs = el.take_events();
                    let reports: Vec<MigrationReport> = evs
                        .iter()
                        .filter_map(|(_, e)| match e {
                            MigrationEvent::Completed { migration, .. }
                            | MigrationEvent::Aborted { migration, .. } => {
                                el.instance().report(*migration)
                            }
                            _ => None,
                        })
                        .collect();
                    (evs, reports)
                })
                .map_err(cfg_err)?;
            let (evs, reports) = evs;
            for r in &reports {
                if let Some(&i) = by_id.get(&r.migration) {
                    add_report(&mut migrations[i], r);
                }
            }
            for (at, e) in evs {
                orch.handle_instance_event(at, InstanceId(id as u16), &e);
                let (mig, ok) = match e {
                    MigrationEvent::Completed {
                        migration,
                        role: Role::Source,
                    } => (migration, true),
                    MigrationEvent::Aborted {
                        migration,
                        role: Role::Source,
                        ..
                    } => (migration, false),
                    _ => continue,
                };
                if let Some(&i) = by_id.get(&mig) {
                    let m = &mut migrations[i];
                    m.ended_s = Some(secs(at));
                    m.completed = ok;
                    if let Some(ext) = m.external {
                        policy.handle_migration_done(sim.now(), ext, ok);
                    }
                }
            }
        }
        let confirmed = sim
            .poke::<RuleSwitch, _>(sw, |s, _| s.take_confirmed())
            .map_err(cfg_err)?;
        for (token, _) in confirmed {
            orch.handle_barrier(sim.now(), token);
        }
        if secs(sim.now()) >= next_progress {
            progress(secs(sim.now()));
            next_progress += 1.0;
        }
    }
    progress(secs(sim.now()));
    finish(
        cfg,
        &sim,
        &nodes,
        subs,
        servers,
        samples,
        migrations,
        node_events,
        decisions,
        &policy,
    )
}

/// Collects the end figures and checks.
#[allow(clippy::too_many_arguments)]
fn finish(
    cfg: &ElasticConfig,
    sim: &Sim,
    nodes: &[Node],
    subs: ElementId,
    servers: ElementId,
    mut samples: Vec<Sample>,
    migrations: Vec<MigrationRecord>,
    node_events: Vec<NodeEvent>,
    decisions: Vec<Decision>,
    policy: &Autoscaler,
) -> Result<ElasticRun, ElasticError> {
    let missing = || ElasticError::Config("element missing".into());
    let s: &Subscribers = sim.element(subs).ok_or_else(missing)?;
    let v: &Servers = sim.element(servers).ok_or_else(missing)?;
    let dt = cfg.load_interval.as_secs_f64();
    let at = |b: &[u64], i: usize| b.get(i).copied().unwrap_or(0);
    for x in &mut samples {
        // The sample at the end of interval i describes bin i.
        let i = ((x.t_s / dt).round() as usize).saturating_sub(1);
        x.offered_pps = (at(&s.stats.sent_bins, i) + at(&v.stats.sent_bins, i)) as f64 / dt;
        x.goodput_pps = (at(&s.stats.received_bins, i) + at(&v.stats.received_bins, i)) as f64 / dt;
    }
    let report = sim.report();
    let mut drops_by_cause: BTreeMap<String, u64> = report.ledger.dropped.clone();
    drops_by_cause.retain(|k, _| !k.starts_with("element"));
    for (k, c) in &report.ledger.element_drops {
        let reason = k.rsplit(':').next().unwrap_or(k);
        *drops_by_cause
            .entry(format!("element:{reason}"))
            .or_default() += c;
    }
    let labels: Vec<String> = LossCause::ALL
        .iter()
        .map(|c| format!("element:{}", c.drop_reason().label()))
        .collect();
    let lost_migration = drops_by_cause
        .iter()
        .filter(|(k, _)| labels.contains(k))
        .map(|(_, c)| c)
        .sum();
    let mut invariants = report.check().map_err(|e| e.to_string());
    let mut longest_overload_s = BTreeMap::new();
    for (id, node) in nodes.iter().enumerate() {
        let el: &NatElement = sim.element(node.el).ok_or_else(missing)?;
        if invariants.is_ok() {
            invariants = el
                .instance()
                .nat()
                .check_invariants()
                .map_err(|e| format!("node {id}: {e}"));
        }
        let (mut run, mut best) = (0usize, 0usize);
        for x in &samples {
            let over = x.nodes.get(id).is_some_and(|ns| ns.pps > cfg.capacity.pps);
            run = if over { run + 1 } else { 0 };
            best = best.max(run);
        }
        longest_overload_s.insert(InstanceId(id as u16), best as f64 * dt);
    }
    Ok(ElasticRun {
        config: cfg.clone(),
        max_in_service: samples.iter().map(|x| x.in_service).max().unwrap_or(0),
        samples,
        migrations,
        node_events,
        decisions,
        policy: cfg.scaling.algorithm().map(|_| policy.status().counters),
        sent: s.stats.sent + v.stats.sent,
        delivered: s.stats.received + v.stats.received,
        lost_overload: drops_by_cause
            .get("element:node_overload")
            .copied()
            .unwrap_or(0),
        lost_migration,
        drops_by_cause,
        longest_overload_s,
        connections: (s.opened, s.refused),
        events: report.events,
        invariants,
    })
}
