//! The poster's experiment (Figure 1(b)/(c)) as a simulation: subscribers behind a switch, two
//! NAT instances (the real NAT core and migration engine), a 1 Gbit/s bottleneck towards the
//! servers, long-lived TCP flows saturating it, "fictive" long-lived states pre-loaded on the
//! source, and one migration of the group, driven by the real controller logic
//! ([`flowshift_control::orchestrator`]) through a switch that applies rule changes after an
//! update delay.
//!
//! ```text
//! clients --(10G)-- inside router --(10G)-- switch --(1G bottleneck)-- outside router --(10G)-- servers
//!                                           |    \
//!                                        NAT A   NAT B      (10G each; A<->B chain link and
//!                                                            state-transfer link)
//! ```

use crate::element::StaticRouter;
use crate::host::{AppSpec, HostConfig, TcpConfig};
use crate::link::LinkConfig;
use crate::nat_element::{NatElement, NatPorts};
use crate::packet::ElementId;
use crate::sim::{AppId, Sim, SimConfig};
use crate::switch::RuleSwitch;
use flowshift_control::orchestrator::{Command, Orchestrator};
use flowshift_control::rules::{GroupRoute, InstancePort, Topology};
use flowshift_migration::{
    Algorithm, Instance, InstanceId, MigrationConfig, MigrationEvent, MigrationReport, Params, Role,
};
use flowshift_nat::{GroupConfig, Nat, NatConfig};
use flowshift_wire::Instant;
use rand::RngExt;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::time::Duration;

const A: InstanceId = InstanceId(0);
const B: InstanceId = InstanceId(1);
const SW_INSIDE: u16 = 1;
const SW_OUTSIDE: u16 = 2;
const SW_NAT_A: u16 = 10;
const SW_NAT_B: u16 = 11;
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// The scenario's knobs. Defaults reproduce the poster: 100 TCP flows over a 1 Gbit/s
/// bottleneck, 65,000 states on the source, migration at 1 s.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterConfig {
    /// Seed of the whole run.
    pub seed: u64,
    /// Migration algorithm.
    pub algorithm: Algorithm,
    /// Long-lived TCP flows (iperf-like), spread over `client_hosts` subscribers.
    pub flows: usize,
    /// Subscriber hosts carrying the flows (each gets one port block).
    pub client_hosts: usize,
    /// Fictive states pre-loaded on the source (24-byte records, established TCP and UDP,
    /// idle, so they never expire during the run); above ~118,000 several sessions share a
    /// mapping.
    pub fictive_states: u32,
    /// Bottleneck rate (bit/s).
    pub bottleneck_bps: u64,
    /// Bottleneck queue (bytes).
    pub bottleneck_queue: usize,
    /// One-way propagation delay of each link (the bottleneck has 5 times this).
    pub hop_delay: Duration,
    /// State-transfer link rate (bit/s) and one-way delay.
    pub transfer_bps: u64,
    /// State-transfer link one-way delay.
    pub transfer_delay: Duration,
    /// Random loss on the state-transfer link (fault injection).
    pub transfer_loss: f64,
    /// Fraction of transfer frames delayed by an extra millisecond (reordering).
    pub transfer_reorder: f64,
    /// The daisy chain crosses the transfer link's path (its rate and delay: a destination
    /// at a distance) instead of a local 10 Gbit/s link.
    pub chain_over_transfer_path: bool,
    /// The state-transfer link breaks (both directions) at this time (fault injection).
    pub transfer_down_at: Option<Duration>,
    /// Instance A (the source) crashes at this time: all its links go down for good.
    pub source_crash_at: Option<Duration>,
    /// Time from a switch update to its effect (and barrier reply).
    pub switch_update_delay: Duration,
    /// Controller reaction granularity.
    pub control_step: Duration,
    /// When the migration starts.
    pub migrate_at: Duration,
    /// Length of the run.
    pub duration: Duration,
    /// Goodput bin width.
    pub goodput_bin: Duration,
    /// Migration parameters.
    pub params: Params,
}

impl ClusterConfig {
    /// The poster's set-up for `algorithm`.
    pub fn poster(algorithm: Algorithm, seed: u64) -> Self {
        let mut params = Params {
            batch_size: 512,
            batch_max_bytes: 60 << 10,
            idle_sample_interval: Duration::from_millis(50),
            idle_window_samples: 4,
            idle_max: Duration::from_millis(500),
            drain: Duration::from_millis(3),
            ..Params::default()
        };
        if algorithm != Algorithm::FreezeCopy {
            params.batches_in_flight = 8;
        }
        ClusterConfig {
            seed,
            algorithm,
            flows: 100,
            client_hosts: 10,
            fictive_states: 65_000,
            bottleneck_bps: 1_000_000_000,
            bottleneck_queue: 375_000,
            hop_delay: Duration::from_micros(50),
            transfer_bps: 1_000_000_000,
            transfer_delay: Duration::from_micros(100),
            transfer_loss: 0.0,
            transfer_reorder: 0.0,
            chain_over_transfer_path: false,
            transfer_down_at: None,
            source_crash_at: None,
            switch_update_delay: Duration::from_millis(1),
            control_step: Duration::from_millis(1),
            migrate_at: Duration::from_secs(1),
            duration: Duration::from_secs(3),
            goodput_bin: Duration::from_millis(10),
            params,
        }
    }
}

/// Checks made from outside the system under test at the end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Invariants {
    /// Every packet delivered, dropped with a cause, held or in flight (the simulator ledger).
    pub ledger: Result<(), String>,
    /// Both NATs' internal invariants (indices, counts, port ownership).
    pub nat_tables: Result<(), String>,
    /// Each mapping of the group on exactly one instance; no external port bound on both.
    pub single_owner: Result<(), String>,
}

impl Invariants {
    /// All hold.
    pub fn ok(&self) -> bool {
        self.ledger.is_ok() && self.nat_tables.is_ok() && self.single_owner.is_ok()
    }
}

/// Everything measured in one run.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterRun {
    /// The configuration.
    pub config: ClusterConfig,
    /// Aggregate goodput at the servers: (bin start ms, Mbit/s).
    pub goodput: Vec<(f64, f64)>,
    /// The source's migration report.
    pub source: Option<MigrationReport>,
    /// The destination's migration report.
    pub destination: Option<MigrationReport>,
    /// Controller milestones (ms): requested, redirect sent, redirect confirmed, done.
    pub controller: BTreeMap<&'static str, f64>,
    /// Packets delivered out of order, all flows.
    pub reordered_packets: u64,
    /// Packets dropped anywhere in the network, by cause (queue overflow, NAT reasons, ...).
    pub drops_by_cause: BTreeMap<String, u64>,
    /// Median one-way delay of data packets in the 500 ms before the migration (ms).
    pub baseline_delay_ms: f64,
    /// Largest delay above the baseline of a data packet sent during the migration (ms).
    pub added_delay_ms_max: f64,
    /// 99th percentile of that added delay (ms).
    pub added_delay_ms_p99: f64,
    /// Mean goodput before the migration (Mbit/s, over the second half of the warm-up).
    pub goodput_before_mbps: f64,
    /// Mean goodput from the start of the migration to 1 s after its end (Mbit/s).
    pub goodput_during_mbps: f64,
    /// Simulated events.
    pub events: u64,
    /// Outside checks.
    pub invariants: Invariants,
}

/// Why a run could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

fn cfg_err<E: std::fmt::Display>(e: E) -> ClusterError {
    ClusterError::Config(e.to_string())
}

fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 1 + i as u8)
}

fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 1 + i as u8)
}

fn nat_config(max_sessions: u32) -> NatConfig {
    NatConfig {
        max_sessions,
        max_mappings: max_sessions,
        max_sessions_per_mapping: 4096,
        ..NatConfig::default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mean_between(series: &[(f64, f64)], from_ms: f64, to_ms: f64) -> f64 {
    let v: Vec<f64> = series
        .iter()
        .filter(|(t, _)| *t >= from_ms && *t < to_ms)
        .map(|p| p.1)
        .collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Runs the scenario. `progress` receives the virtual time reached (seconds), now and then.
pub fn run(cfg: &ClusterConfig, progress: &mut dyn FnMut(f64)) -> Result<ClusterRun, ClusterError> {
    if cfg.flows == 0
        || cfg.client_hosts == 0
        || cfg.client_hosts > 10
        || cfg.migrate_at >= cfg.duration
    {
        return Err(ClusterError::Config(
            "need flows > 0, 1..=10 client hosts and migrate_at < duration".into(),
        ));
    }
    let servers_n = cfg.client_hosts;
    let mut sim = Sim::new(SimConfig {
        seed: cfg.seed,
        goodput_bin: cfg.goodput_bin,
    });

    // NAT instances: A serves the group and holds the fictive states; B starts empty.
    let group = GroupConfig {
        external: EXTERNAL,
        subscribers: "100.64.0.0/16".parse().map_err(cfg_err)?,
    };
    let max_sessions = cfg.fictive_states + 64 * cfg.flows as u32 + 4096;
    let mut nat_a = Nat::new(NatConfig {
        groups: vec![group.clone()],
        ..nat_config(max_sessions)
    })
    .map_err(cfg_err)?;
    let g = nat_a
        .group_id(EXTERNAL)
        .ok_or_else(|| ClusterError::Config("group missing".into()))?;
    for chunk in flowshift_nat::record::fictive_records(cfg.fictive_states, cfg.seed) {
        nat_a.import(g, Instant::ZERO, &chunk).map_err(cfg_err)?;
    }
    while nat_a.poll_event().is_some() {}
    let nat_b = Nat::new(nat_config(max_sessions)).map_err(cfg_err)?;
    let mcfg = MigrationConfig {
        report_drops: true,
        cutover_hold_max: Duration::from_millis(200),
        ..MigrationConfig::default()
    };
    let inst_a = Instance::with_meta(A, nat_a, mcfg.clone()).map_err(cfg_err)?;
    let inst_b = Instance::with_meta(B, nat_b, mcfg).map_err(cfg_err)?;
    let na = sim.add_element("nat-a", NatElement::new(inst_a, NatPorts::pair_to(B)));
    let nb = sim.add_element("nat-b", NatElement::new(inst_b, NatPorts::pair_to(A)));

    // Controller and switch.
    let topo = Topology {
        inside_port: SW_INSIDE as u32,
        outside_port: SW_OUTSIDE as u32,
        instances: BTreeMap::from([
            (
                A,
                InstancePort {
                    port: SW_NAT_A as u32,
                    mac: [2, 0, 0, 0, 0, 0xa],
                },
            ),
            (
                B,
                InstancePort {
                    port: SW_NAT_B as u32,
                    mac: [2, 0, 0, 0, 0, 0xb],
                },
            ),
        ]),
    };
    let mut orch = Orchestrator::new(
        topo,
        vec![GroupRoute {
            external: EXTERNAL,
            subscribers: group.subscribers,
            owner: A,
        }],
    )
    .map_err(cfg_err)?;
    let sw = sim.add_element(
        "switch",
        RuleSwitch::new(orch.table().to_vec(), cfg.switch_update_delay),
    );

    // Routers, hosts, links.
    let fast = LinkConfig::new(10_000_000_000, cfg.hop_delay, 1_000_000);
    let mut inside = StaticRouter::new().route(Ipv4Addr::UNSPECIFIED, 0, 0);
    let mut outside = StaticRouter::new().route(Ipv4Addr::UNSPECIFIED, 0, 0);
    let mut clients = Vec::new();
    let mut servers: Vec<ElementId> = Vec::new();
    for i in 0..cfg.client_hosts {
        inside.add_route(client_addr(i), 32, 1 + i as u16);
    }
    for i in 0..servers_n {
        outside.add_route(server_addr(i), 32, 1 + i as u16);
    }
    let r_in = sim.add_element("inside-router", inside);
    let r_out = sim.add_element("outside-router", outside);
    for i in 0..cfg.client_hosts {
        let c = sim
            .add_host(HostConfig::new(format!("sub{i}"), client_addr(i)))
            .map_err(cfg_err)?;
        sim.connect((c, 0), (r_in, 1 + i as u16), fast.clone())
            .map_err(cfg_err)?;
        clients.push(c);
    }
    for i in 0..servers_n {
        let s = sim
            .add_host(HostConfig::new(format!("srv{i}"), server_addr(i)))
            .map_err(cfg_err)?;
        sim.connect((s, 0), (r_out, 1 + i as u16), fast.clone())
            .map_err(cfg_err)?;
        servers.push(s);
    }
    sim.connect((r_in, 0), (sw, SW_INSIDE), fast.clone())
        .map_err(cfg_err)?;
    let bottleneck = LinkConfig::new(cfg.bottleneck_bps, cfg.hop_delay * 5, cfg.bottleneck_queue);
    sim.connect((sw, SW_OUTSIDE), (r_out, 0), bottleneck)
        .map_err(cfg_err)?;
    let a_switch = sim
        .connect((sw, SW_NAT_A), (na, 0), fast.clone())
        .map_err(cfg_err)?;
    sim.connect((sw, SW_NAT_B), (nb, 0), fast.clone())
        .map_err(cfg_err)?;
    let chain_link = if cfg.chain_over_transfer_path {
        LinkConfig::new(cfg.transfer_bps, cfg.transfer_delay, 8 << 20)
    } else {
        fast.clone()
    };
    let chain = sim.connect((na, 1), (nb, 1), chain_link).map_err(cfg_err)?;
    let transfer = LinkConfig::new(cfg.transfer_bps, cfg.transfer_delay, 64 << 20)
        .with_loss(cfg.transfer_loss)
        .with_reorder(cfg.transfer_reorder, Duration::from_millis(1));
    let transfer = sim.connect((na, 2), (nb, 2), transfer).map_err(cfg_err)?;
    if let Some(t) = cfg.transfer_down_at {
        for l in [transfer.0, transfer.1] {
            sim.schedule_link_state(l, Instant::ZERO + t, false)
                .map_err(cfg_err)?;
        }
    }
    if let Some(t) = cfg.source_crash_at {
        for l in [
            a_switch.0, a_switch.1, chain.0, chain.1, transfer.0, transfer.1,
        ] {
            sim.schedule_link_state(l, Instant::ZERO + t, false)
                .map_err(cfg_err)?;
        }
    }

    // Applications: sinks on the servers, bulk senders on the subscribers.
    let tcp = TcpConfig::default();
    let per_server = cfg.flows.div_ceil(servers_n);
    let mut sinks: Vec<AppId> = Vec::new();
    for &s in &servers {
        sinks.push(
            sim.add_app(
                s,
                AppSpec::TcpSink {
                    port: 5001,
                    backlog: per_server,
                    tcp: tcp.clone(),
                },
            )
            .map_err(cfg_err)?,
        );
    }
    let mut rng = sim.rng(1);
    for f in 0..cfg.flows {
        let start = Instant::ZERO + Duration::from_micros(rng.random_range(0..50_000));
        let dst = SocketAddrV4::new(server_addr(f % servers_n), 5001);
        sim.add_app(
            clients[f % cfg.client_hosts],
            AppSpec::TcpSource {
                dst,
                bytes: None,
                start,
                tcp: tcp.clone(),
            },
        )
        .map_err(cfg_err)?;
    }

    // Delay samples of data packets at the servers: (sent ns, one-way delay ns).
    let samples: Rc<RefCell<Vec<(u64, u64)>>> = Rc::new(RefCell::new(Vec::new()));
    {
        let samples = samples.clone();
        let servers = servers.clone();
        sim.set_arrival_observer(move |a| {
            if servers.contains(&a.host) && a.packet.bytes().len() > 100 {
                samples
                    .borrow_mut()
                    .push((a.packet.sent_at().as_nanos(), a.delay.as_nanos() as u64));
            }
        });
    }

    // Run: warm-up, then the migration under the controller, then the rest.
    let ms = |t: Instant| t.as_nanos() as f64 / 1e6;
    let mut controller = BTreeMap::new();
    let end = Instant::ZERO + cfg.duration;
    let start_at = Instant::ZERO + cfg.migrate_at;
    let mut next_progress = 0.0;
    while sim.now() < start_at {
        let t = (sim.now() + Duration::from_millis(50)).min(start_at);
        sim.run_until(t);
        if t.as_secs_f64() >= next_progress {
            progress(t.as_secs_f64());
            next_progress += 0.1;
        }
    }
    orch.request_migration(sim.now(), EXTERNAL, B, cfg.algorithm)
        .map_err(cfg_err)?;
    controller.insert("requested_ms", ms(sim.now()));
    let mut migration = None;
    while sim.now() < end {
        let now = sim.now();
        while let Some(cmd) = orch.poll_command() {
            match cmd {
                Command::StartMigration(s) => {
                    let node = if s.on == A { na } else { nb };
                    let params = cfg.params.clone();
                    let id = sim
                        .poke::<NatElement, _>(node, |el, out| el.start_migration(out, &s, params))
                        .map_err(cfg_err)?;
                    migration = id;
                    orch.migration_started(now, s.external, id);
                }
                Command::UpdateSwitch { diff, token } => {
                    sim.poke::<RuleSwitch, _>(sw, |s, _| s.submit(now, diff, token))
                        .map_err(cfg_err)?;
                    controller.insert("redirect_sent_ms", ms(now));
                }
                Command::CutoverDone { on, migration } => {
                    let node = if on == A { na } else { nb };
                    sim.poke::<NatElement, _>(node, |el, out| {
                        let _ = el.instance_mut().cutover_done(now, migration);
                        el.flush(out);
                    })
                    .map_err(cfg_err)?;
                }
            }
        }
        sim.run_until(now + cfg.control_step);
        for (node, id) in [(na, A), (nb, B)] {
            let evs = sim
                .poke::<NatElement, _>(node, |el, _| el.take_events())
                .map_err(cfg_err)?;
            for (at, e) in evs {
                if let MigrationEvent::Completed {
                    role: Role::Source, ..
                } = e
                {
                    controller.insert("done_ms", ms(at));
                }
                orch.handle_instance_event(at, id, &e);
            }
        }
        let confirmed = sim
            .poke::<RuleSwitch, _>(sw, |s, _| s.take_confirmed())
            .map_err(cfg_err)?;
        for (token, at) in confirmed {
            controller.insert("redirect_confirmed_ms", ms(at));
            orch.handle_barrier(sim.now(), token);
        }
        if sim.now().as_secs_f64() >= next_progress {
            progress(sim.now().as_secs_f64());
            next_progress += 0.1;
        }
    }
    progress(sim.now().as_secs_f64());

    // Collect.
    let report = sim.report();
    let goodput = sim.goodput(&sinks);
    let a: &NatElement = sim
        .element(na)
        .ok_or_else(|| ClusterError::Config("nat-a missing".into()))?;
    let b: &NatElement = sim
        .element(nb)
        .ok_or_else(|| ClusterError::Config("nat-b missing".into()))?;
    let source = migration.and_then(|id| a.instance().report(id));
    let destination = migration.and_then(|id| b.instance().report(id));
    let mut invariants = Invariants {
        ledger: report.check().map_err(|e| e.to_string()),
        nat_tables: a
            .instance()
            .nat()
            .check_invariants()
            .map_err(|e| format!("nat-a: {e}"))
            .and_then(|_| {
                b.instance()
                    .nat()
                    .check_invariants()
                    .map_err(|e| format!("nat-b: {e}"))
            }),
        single_owner: Ok(()),
    };
    // Each mapping of the group on exactly one instance: compare external ports held. The one
    // exception the protocol cannot avoid (Two Generals): after a channel failure, a batch
    // whose acknowledgement was lost may exist on both, as an identical replica (same internal
    // endpoint, same external port); the source reports those as in doubt. While a batch is in
    // flight the source's copy is frozen (it serves nothing): that is a move in progress.
    let held = |el: &NatElement| -> BTreeMap<(u8, u16), (SocketAddrV4, bool)> {
        let nat = el.instance().nat();
        let Some(g) = nat.group_id(EXTERNAL) else {
            return BTreeMap::new();
        };
        nat.group_mappings(g)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| nat.mapping_info(id).ok())
            .map(|m| ((m.proto, m.external_port), (m.internal, m.frozen)))
            .collect()
    };
    let (ha, hb) = (held(a), held(b));
    let in_doubt = source.as_ref().map_or(0, |r| r.in_doubt_mappings as usize);
    let mut replicas = 0;
    for (k, (int_a, frozen_a)) in &ha {
        match hb.get(k) {
            Some((int_b, _)) if int_b != int_a => {
                invariants.single_owner = Err(format!(
                    "external {EXTERNAL} proto {} port {} maps {int_a} on A and {int_b} on B",
                    k.0, k.1
                ));
            }
            Some(_) if !frozen_a => replicas += 1,
            Some(_) => {}
            None => {}
        }
    }
    if invariants.single_owner.is_ok() && replicas > in_doubt {
        invariants.single_owner = Err(format!(
            "{replicas} mappings served by both instances, only {in_doubt} reported in doubt"
        ));
    }
    let mig_start = source
        .as_ref()
        .and_then(|r| r.phases.first())
        .map_or(cfg.migrate_at.as_secs_f64() * 1e3, |p| p.start_ms);
    let mig_end = controller.get("done_ms").copied().unwrap_or(ms(end));
    let samples = samples.borrow();
    let mut base: Vec<f64> = samples
        .iter()
        .filter(|(s, _)| (*s as f64 / 1e6) >= mig_start - 500.0 && (*s as f64 / 1e6) < mig_start)
        .map(|(_, d)| *d as f64 / 1e6)
        .collect();
    base.sort_by(f64::total_cmp);
    let baseline = percentile(&base, 0.5);
    let mut added: Vec<f64> = samples
        .iter()
        .filter(|(s, _)| (*s as f64 / 1e6) >= mig_start && (*s as f64 / 1e6) <= mig_end + 50.0)
        .map(|(_, d)| (*d as f64 / 1e6 - baseline).max(0.0))
        .collect();
    added.sort_by(f64::total_cmp);
    let mut drops_by_cause: BTreeMap<String, u64> = report.ledger.dropped.clone();
    drops_by_cause.retain(|k, _| !k.starts_with("element"));
    for (k, n) in &report.ledger.element_drops {
        drops_by_cause.insert(k.clone(), *n);
    }
    Ok(ClusterRun {
        config: cfg.clone(),
        goodput_before_mbps: mean_between(&goodput, mig_start / 2.0, mig_start),
        goodput_during_mbps: mean_between(&goodput, mig_start, mig_end + 1000.0),
        goodput,
        source,
        destination,
        controller,
        reordered_packets: sim.flows().iter().map(|f| f.reordered).sum(),
        drops_by_cause,
        baseline_delay_ms: baseline,
        added_delay_ms_max: added.last().copied().unwrap_or(0.0),
        added_delay_ms_p99: percentile(&added, 0.99),
        events: report.events,
        invariants,
    })
}
