//! The elastic policy in the daemon: feeds node loads from the nodes' periodic status into
//! [`Autoscaler`], turns its `Migrate` into orchestrator migrations and its
//! `StartNode`/`StopNode` into node life-cycle (in or out of service, and the configured
//! `start_command`/`stop_command`).
//!
//! **Load** of a node, from two consecutive status replies: packets/s from
//! `counters.io.rx_packets` (frames taken from its ring, chained ones included) over the
//! node's own uptime; busy from its packet thread's CPU time over the same span; sessions
//! from its groups. A group's packets/s comes from the switch: the packet counters of its two
//! steering rules (both directions) in the flow statistics the controller polls every second,
//! over the time between two replies (counted `group_rates_measured`). Without fresh switch
//! counters for a group it is the node's rate shared out by the group's share of the node's
//! sessions, evenly when it has none (`group_rates_estimated`). Only groups the orchestrator
//! routes to the node count as the node's.
//! **Life cycle.** Standby nodes (`standby = true`) are out of service at start. On
//! `StartNode` the start command runs (if any) and the node is in service once it is
//! connected; on `StopNode` it leaves service and the stop command runs once the node's next
//! status has arrived (its final counters stay in `flowshift status`), after at most
//! [`STOP_WAIT_TICKS`] policy ticks, or at once if it is not connected. Commands run
//! detached, at most [`MAX_CHILDREN`] at once (more are refused and counted); their exit is
//! collected on later ticks.

use crate::config::ClusterConfig;
use crate::switch::FlowCounter;
use flowshift_control::api::NodeStatus;
use flowshift_control::autoscale::{Action, AutoscaleStatus, Autoscaler, GroupLoad, NodeLoad};
use flowshift_control::orchestrator::{Orchestrator, Stage};
use flowshift_control::rules::steered_group;
use flowshift_migration::InstanceId;
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command};
use tracing::{info, warn};

/// Commands running at once, at most.
pub const MAX_CHILDREN: usize = 16;
/// Policy ticks a stop command waits for the node's final status, at most.
pub const STOP_WAIT_TICKS: u8 = 4;

/// Counters of the daemon's side of the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoscaleDriverCounters {
    /// Load reports handed to the policy.
    pub load_reports: u64,
    /// Policy migrations the orchestrator refused (reported failed to the policy).
    pub migrations_refused: u64,
    /// Start/stop commands started.
    pub commands_run: u64,
    /// Commands that could not start, exited non-zero, or were refused (too many running).
    pub commands_failed: u64,
    /// Group loads taken from the switch's steering-rule counters.
    #[serde(default)]
    pub group_rates_measured: u64,
    /// Group loads estimated from the node's rate split by session shares (no fresh switch
    /// counters for the group).
    #[serde(default)]
    pub group_rates_estimated: u64,
}

/// Per-group packet rates from the switch's steering-rule counters: packets of both
/// directions over the interval between two flow-statistics replies.
#[derive(Default)]
struct SwitchRates {
    /// The last reply: when, and each group's packets.
    last: Option<(Instant, BTreeMap<Ipv4Addr, u64>)>,
    /// Rates between the last two replies, and when the later came.
    pps: BTreeMap<Ipv4Addr, f64>,
    pps_at: Option<Instant>,
}

/// How long switch rates stay usable (a few statistics intervals).
const SWITCH_RATES_FRESH: std::time::Duration = std::time::Duration::from_secs(3);

/// A node's counters at its last status.
#[derive(Clone, Copy)]
struct Last {
    uptime_s: f64,
    rx: u64,
    cpu_us: u64,
}

/// See the module documentation.
pub(crate) struct Elastic {
    policy: Autoscaler,
    start_command: Vec<String>,
    stop_command: Vec<String>,
    in_service: BTreeMap<InstanceId, bool>,
    starting: Vec<InstanceId>,
    /// Nodes out of service whose stop command waits: ticks left (0: final status seen).
    stopping: BTreeMap<InstanceId, u8>,
    last: BTreeMap<InstanceId, Last>,
    loads: BTreeMap<InstanceId, NodeLoad>,
    rates: SwitchRates,
    /// The policy's migration in the orchestrator's list: (index, group).
    pending: Option<(usize, Ipv4Addr)>,
    children: Vec<(String, Child)>,
    counters: AutoscaleDriverCounters,
}

impl Elastic {
    /// The policy for `cfg` (validated): standby nodes out of service, the others in.
    pub(crate) fn new(cfg: &ClusterConfig) -> Result<Elastic, String> {
        let active: Vec<InstanceId> = cfg
            .nodes
            .iter()
            .filter(|n| !n.standby)
            .map(|n| n.id)
            .collect();
        let standby: Vec<InstanceId> = cfg
            .nodes
            .iter()
            .filter(|n| n.standby)
            .map(|n| n.id)
            .collect();
        Ok(Elastic {
            policy: Autoscaler::new(cfg.autoscale.clone(), &active, &standby)?,
            start_command: cfg.autoscale.start_command.clone(),
            stop_command: cfg.autoscale.stop_command.clone(),
            in_service: cfg.nodes.iter().map(|n| (n.id, !n.standby)).collect(),
            starting: Vec::new(),
            stopping: BTreeMap::new(),
            last: BTreeMap::new(),
            loads: BTreeMap::new(),
            rates: SwitchRates::default(),
            pending: None,
            children: Vec::new(),
            counters: AutoscaleDriverCounters::default(),
        })
    }

    /// Whether node `id` is in service (unknown nodes are not).
    pub(crate) fn in_service(&self, id: InstanceId) -> bool {
        self.in_service.get(&id).copied().unwrap_or(false)
    }

    /// A flow-statistics reply taken at `at` (the same reply again changes nothing): each
    /// group's packets are the sum of its steering rules' counters; rates come from the
    /// change since the previous reply (a counter that went down, e.g. a rule re-added,
    /// gives no rate for its group).
    pub(crate) fn switch_flows(&mut self, at: Instant, flows: &[FlowCounter]) {
        if self.rates.last.as_ref().is_some_and(|(t, _)| *t == at) {
            return;
        }
        let mut packets: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
        for f in flows {
            if let Some(g) = steered_group(f.cookie) {
                *packets.entry(g).or_default() += f.packets;
            }
        }
        if let Some((t, prev)) = &self.rates.last {
            let dt = at.saturating_since(*t).as_secs_f64();
            if dt > 0.0 {
                self.rates.pps = packets
                    .iter()
                    .filter_map(|(g, &n)| {
                        let p = *prev.get(g)?;
                        (n >= p).then(|| (*g, (n - p) as f64 / dt))
                    })
                    .collect();
                self.rates.pps_at = Some(at);
            }
        }
        self.rates.last = Some((at, packets));
    }

    /// A node's status reply at `received`: computes its load from the change since its last one;
    /// a group's packet rate comes from the switch when it has fresh counters for it.
    pub(crate) fn node_status(
        &mut self,
        received: Instant,
        id: InstanceId,
        s: &NodeStatus,
        orch: &Orchestrator,
    ) {
        if let Some(left) = self.stopping.get_mut(&id) {
            *left = 0;
            return;
        }
        let now = Last {
            uptime_s: s.uptime_s,
            rx: s.counters.io.rx_packets,
            cpu_us: s.counters.cpu.packet_thread_us,
        };
        let Some(prev) = self.last.insert(id, now) else {
            return;
        };
        let dt = now.uptime_s - prev.uptime_s;
        if dt.is_nan() || dt <= 0.0 || now.rx < prev.rx {
            return; // restarted node or no time passed: wait for the next pair
        }
        let pps = (now.rx - prev.rx) as f64 / dt;
        let busy = now.cpu_us.saturating_sub(prev.cpu_us) as f64 / 1e6 / dt;
        let owned: Vec<(Ipv4Addr, u64)> = s
            .groups
            .iter()
            .filter(|g| orch.owner_of(g.external) == Some(id))
            .map(|g| (g.external, u64::from(g.sessions)))
            .collect();
        let sessions: u64 = owned.iter().map(|g| g.1).sum();
        let n = owned.len().max(1) as f64;
        let fresh = self
            .rates
            .pps_at
            .is_some_and(|t| received < t + SWITCH_RATES_FRESH);
        let groups = owned
            .iter()
            .map(|&(external, gs)| {
                let measured = fresh.then(|| self.rates.pps.get(&external)).flatten();
                let pps = match measured {
                    Some(&p) => {
                        self.counters.group_rates_measured += 1;
                        p
                    }
                    None => {
                        self.counters.group_rates_estimated += 1;
                        if sessions > 0 {
                            pps * gs as f64 / sessions as f64
                        } else {
                            pps / n
                        }
                    }
                };
                GroupLoad {
                    external,
                    pps,
                    sessions: gs,
                }
            })
            .collect();
        self.loads.insert(
            id,
            NodeLoad {
                node: id,
                pps,
                sessions,
                busy: busy.clamp(0.0, 1.0),
                groups,
            },
        );
    }

    /// Runs the policy once (call at the status interval): feeds the loads gathered since the
    /// last call, settles the migration and node starts it waits for, and carries out its
    /// actions. `connected` tells whether a node's control link is up; `start` is called for
    /// each migration requested (the daemon records its parameters).
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        orch: &mut Orchestrator,
        connected: &dyn Fn(InstanceId) -> bool,
        start: &mut dyn FnMut(Ipv4Addr),
    ) {
        self.reap();
        if let Some((i, external)) = self.pending {
            match orch.migrations().get(i).map(|m| m.stage) {
                Some(Stage::Done) => {
                    self.pending = None;
                    self.policy.handle_migration_done(now, external, true);
                }
                Some(Stage::Aborted) | None => {
                    self.pending = None;
                    self.policy.handle_migration_done(now, external, false);
                }
                Some(_) => {}
            }
        }
        let stopping = std::mem::take(&mut self.stopping);
        for (id, left) in stopping {
            if left == 0 || !connected(id) {
                self.run(&self.stop_command.clone(), id);
            } else {
                self.stopping.insert(id, left - 1);
            }
        }
        for id in std::mem::take(&mut self.starting) {
            if connected(id) {
                info!(node = %id, "autoscale: node in service");
                self.in_service.insert(id, true);
                self.policy.handle_node_ready(now, id);
            } else {
                self.starting.push(id);
            }
        }
        let loads: Vec<NodeLoad> = std::mem::take(&mut self.loads)
            .into_values()
            .filter(|l| self.in_service(l.node))
            .collect();
        if loads.is_empty() {
            self.policy.handle_timeout(now);
        } else {
            self.counters.load_reports += 1;
            self.policy.handle_load(now, &loads);
        }
        while let Some(a) = self.policy.poll_action() {
            info!(?a, "autoscale decision");
            match a {
                Action::StartNode { node } => {
                    self.run(&self.start_command.clone(), node);
                    self.starting.push(node);
                }
                Action::StopNode { node } => {
                    self.in_service.insert(node, false);
                    self.last.remove(&node);
                    self.stopping.insert(node, STOP_WAIT_TICKS);
                }
                Action::Migrate {
                    external,
                    from,
                    to,
                    algorithm,
                } => {
                    let ok = connected(from)
                        && connected(to)
                        && orch.request_migration(now, external, to, algorithm).is_ok();
                    if ok {
                        start(external);
                        self.pending = Some((orch.migrations().len() - 1, external));
                    } else {
                        warn!(%external, %from, %to, "autoscale: migration refused");
                        self.counters.migrations_refused += 1;
                        self.policy.handle_migration_done(now, external, false);
                    }
                }
            }
        }
    }

    /// Starts `argv` for `node` (`{node}` replaced, else the id appended), detached.
    fn run(&mut self, argv: &[String], node: InstanceId) {
        let Some((prog, args)) = argv.split_first() else {
            return;
        };
        let id = node.to_string();
        let mut args: Vec<String> = args.iter().map(|a| a.replace("{node}", &id)).collect();
        if !argv.iter().any(|a| a.contains("{node}")) {
            args.push(id);
        }
        let what = format!("{prog} {}", args.join(" "));
        if self.children.len() >= MAX_CHILDREN {
            self.counters.commands_failed += 1;
            warn!(command = %what, "autoscale: too many commands running; refused");
            return;
        }
        match Command::new(prog).args(&args).spawn() {
            Ok(c) => {
                info!(command = %what, "autoscale: command started");
                self.counters.commands_run += 1;
                self.children.push((what, c));
            }
            Err(e) => {
                self.counters.commands_failed += 1;
                warn!(command = %what, "autoscale: command failed to start: {e}");
            }
        }
    }

    /// Collects finished commands.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.children.len() {
            match self.children[i].1.try_wait() {
                Ok(None) => i += 1,
                Ok(Some(st)) => {
                    let (what, _) = self.children.swap_remove(i);
                    if !st.success() {
                        self.counters.commands_failed += 1;
                        warn!(command = %what, %st, "autoscale: command failed");
                    }
                }
                Err(e) => {
                    let (what, _) = self.children.swap_remove(i);
                    self.counters.commands_failed += 1;
                    warn!(command = %what, "autoscale: waiting for command: {e}");
                }
            }
        }
    }

    /// The policy's state for `GET /status`.
    pub(crate) fn status(&self) -> AutoscaleStatus {
        self.policy.status()
    }

    /// The driver's counters.
    pub(crate) fn counters(&self) -> AutoscaleDriverCounters {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowshift_control::status::GroupStatus;
    use flowshift_nat::GroupMode;
    use std::time::Duration;

    /// The config tests' cluster with both groups on node 1 and the policy on.
    fn cluster() -> ClusterConfig {
        let text = crate::config::tests::GOOD
            .replace("owner = 2", "owner = 1")
            .replace("[params]", "[autoscale]\nenabled = true\n[params]");
        ClusterConfig::from_toml(&text).unwrap()
    }

    fn flows(g1: u64, g2: u64) -> Vec<FlowCounter> {
        let steer = |ext: [u8; 4], packets| FlowCounter {
            table_id: 0,
            priority: 200,
            cookie: (1 << 56) | u64::from(u32::from(Ipv4Addr::from(ext))),
            match_: String::new(),
            packets,
            bytes: 0,
            duration_s: 0.0,
        };
        // Each group has two steering rules (one per direction); another rule's counter
        // must not count.
        let mut other = steer([0, 0, 0, 0], 1_000_000);
        other.cookie = 2 << 56;
        vec![
            steer([198, 18, 0, 1], g1 / 2),
            steer([198, 18, 0, 1], g1 - g1 / 2),
            steer([198, 18, 0, 2], g2),
            other,
        ]
    }

    fn status(uptime_s: f64, rx: u64) -> NodeStatus {
        let group = |i: u8, sessions| GroupStatus {
            external: Ipv4Addr::new(198, 18, 0, i),
            mode: GroupMode::Active,
            mappings: sessions,
            sessions,
        };
        let mut s = NodeStatus {
            id: InstanceId(1),
            uptime_s,
            groups: vec![group(1, 10), group(2, 90)],
            ..NodeStatus::default()
        };
        s.counters.io.rx_packets = rx;
        s
    }

    #[test]
    fn group_rates_come_from_the_switch_when_fresh_and_from_session_shares_otherwise() {
        let cfg = cluster();
        let orch = Orchestrator::new(cfg.topology(), cfg.group_routes()).unwrap();
        let mut e = Elastic::new(&cfg).unwrap();
        let t0 = Instant::from_secs(10);
        let sec = Duration::from_secs(1);
        let group_pps = |e: &Elastic| -> Vec<f64> {
            e.loads[&InstanceId(1)]
                .groups
                .iter()
                .map(|g| g.pps)
                .collect()
        };
        // No switch counters yet: the node's 1,000 pps split 10:90 by sessions.
        e.node_status(t0, InstanceId(1), &status(1.0, 0), &orch);
        e.node_status(t0 + sec, InstanceId(1), &status(2.0, 1000), &orch);
        assert_eq!(group_pps(&e), vec![100.0, 900.0]);
        assert_eq!(e.counters.group_rates_estimated, 2);
        // Two flow-statistics replies 1 s apart: group 1 carried 800 packets, group 2 200.
        e.switch_flows(t0 + sec, &flows(5_000, 7_000));
        e.switch_flows(t0 + sec, &flows(9_999, 9_999)); // the same reply again: ignored
        e.switch_flows(t0 + 2 * sec, &flows(5_800, 7_200));
        e.node_status(t0 + 2 * sec, InstanceId(1), &status(3.0, 2000), &orch);
        assert_eq!(group_pps(&e), vec![800.0, 200.0]);
        assert_eq!(e.counters.group_rates_measured, 2);
        // Stale switch counters fall back to the estimate.
        e.node_status(t0 + 9 * sec, InstanceId(1), &status(4.0, 3000), &orch);
        assert_eq!(group_pps(&e), vec![100.0, 900.0]);
        // A counter that went down (rule re-added) gives its group no rate (estimated); the
        // other group's 100 packets over the 8 s since the last reply are 12.5 pps.
        e.switch_flows(t0 + 10 * sec, &flows(100, 7_300));
        e.node_status(t0 + 10 * sec, InstanceId(1), &status(5.0, 4000), &orch);
        assert_eq!(group_pps(&e), vec![100.0, 12.5]);
    }
}
