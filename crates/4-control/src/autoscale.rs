//! The elastic policy, sans-IO: from per-node and per-group load to migrations and node
//! life-cycle requests (scale out, rebalance, scale in).
//!
//! **In.** [`Autoscaler::handle_load`] with every node's [`NodeLoad`] (packets/s, sessions,
//! packet-thread busy fraction, and the same per group) at a regular interval;
//! [`Autoscaler::handle_node_ready`] when a node the policy asked to start is in service;
//! [`Autoscaler::handle_migration_done`] when a migration it asked for ended.
//! **Out.** [`Autoscaler::poll_action`]: [`Action::StartNode`], [`Action::Migrate`],
//! [`Action::StopNode`]; [`Autoscaler::status`] for `flowshift status`.
//!
//! **Load** of a node is the largest of pps / `capacity_pps`, sessions / `capacity_sessions`
//! and its busy fraction (1.0 = its configured capacity); a group's load is the largest of its
//! two ratios. **Rules**, checked in this order whenever nothing is in flight, the cool-down
//! has passed and the rate limit allows:
//! 1. a *draining* node still holding groups: move its largest group to the node rule 3 would
//!    drain last (most groups, then most loaded) among those where it stays at most at
//!    `target`, so no group lands on a node drained next; once it holds none:
//!    [`Action::StopNode`];
//! 2. *overload*: an active node above `high` for `sustain`: move the group that brings it
//!    closest to `target` to the least loaded node it fits on (rebalance); if it fits nowhere,
//!    bring a standby node into service first (scale out);
//! 3. *scale in*: every active node below `low` for `sustain`, more than `min_nodes` active,
//!    and the cluster's load fits on one node fewer at `target`: drain the node with the
//!    fewest groups (fewest migrations), the least loaded among those.
//!
//! **No flapping.** One action at a time; a cool-down after each; at most
//! `max_migrations_per_minute`; a group moved is not moved again for `group_rest`; the gap
//! between `low` and `high` (with `target` between) is the hysteresis: after a move no node is
//! above `target`, so none is overloaded, and scale-in needs every node below `low`.
//! **Bound.** An overloaded node is relieved within `sustain` + (node start, when no node has
//! room) + one migration per group to move, as long as the cluster has capacity.

use flowshift_migration::{Algorithm, InstanceId};
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Decisions kept for [`AutoscaleStatus::recent`].
pub const RECENT_DECISIONS: usize = 32;

/// `[autoscale]` of the cluster configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleConfig {
    /// Whether the policy acts (manual `migrate` works either way).
    pub enabled: bool,
    /// Packets/s one node is sized for (load 1.0).
    pub capacity_pps: f64,
    /// Sessions one node is sized for (load 1.0).
    pub capacity_sessions: u64,
    /// Overload threshold (fraction of capacity).
    pub high: f64,
    /// Scale-in threshold: every node below it.
    pub low: f64,
    /// Fill level placements aim at (between `low` and `high`).
    pub target: f64,
    /// How long a condition must hold before the policy acts, ms.
    pub sustain_ms: u64,
    /// Quiet time after each action ends, ms.
    pub cooldown_ms: u64,
    /// A moved group stays put at least this long, ms.
    pub group_rest_ms: u64,
    /// Migrations started in any 60 s window, at most.
    pub max_migrations_per_minute: u32,
    /// Nodes never drained below this many in service.
    pub min_nodes: u32,
    /// An action not reported done after this long is given up (ms).
    pub action_timeout_ms: u64,
    /// Algorithm of the policy's migrations.
    pub algorithm: Algorithm,
    /// For the daemon (the policy ignores it): program and arguments run when a node is
    /// brought into service, `{node}` replaced by its id (appended if absent); empty: none.
    pub start_command: Vec<String>,
    /// Likewise when a node is taken out of service.
    pub stop_command: Vec<String>,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            enabled: false,
            capacity_pps: 1_000_000.0,
            capacity_sessions: 1_000_000,
            high: 0.8,
            low: 0.3,
            target: 0.6,
            sustain_ms: 2_000,
            cooldown_ms: 3_000,
            group_rest_ms: 30_000,
            max_migrations_per_minute: 6,
            min_nodes: 1,
            action_timeout_ms: 30_000,
            algorithm: Algorithm::FreezeCopy,
            start_command: Vec::new(),
            stop_command: Vec::new(),
        }
    }
}

impl AutoscaleConfig {
    /// Checks the thresholds and bounds.
    pub fn validate(&self) -> Result<(), String> {
        let (l, t, h) = (self.low, self.target, self.high);
        if !(0.0 < l && l < t && t < h && h <= 1.0) {
            return Err(format!(
                "autoscale: need 0 < low ({l}) < target ({t}) < high ({h}) <= 1"
            ));
        }
        let pps_ok = self.capacity_pps.is_finite() && self.capacity_pps > 0.0;
        if !pps_ok || self.capacity_sessions == 0 {
            return Err("autoscale: capacity_pps and capacity_sessions must be positive".into());
        }
        if self.max_migrations_per_minute == 0 || self.min_nodes == 0 {
            return Err("autoscale: max_migrations_per_minute and min_nodes must be >= 1".into());
        }
        Ok(())
    }
}

/// One group's load, as its node counts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupLoad {
    /// The group (its external address).
    pub external: Ipv4Addr,
    /// Packets/s through it.
    pub pps: f64,
    /// Its sessions.
    pub sessions: u64,
}

/// One node's load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// The node.
    pub node: InstanceId,
    /// Packets/s through it.
    pub pps: f64,
    /// Its sessions.
    pub sessions: u64,
    /// Fraction of time its packet thread was busy, 0..=1.
    pub busy: f64,
    /// Its groups.
    pub groups: Vec<GroupLoad>,
}

/// A node's place in the policy's life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Configured, not in service (may be stopped).
    Standby,
    /// Asked to start; waiting for it to be in service.
    Starting,
    /// In service: may receive groups.
    Active,
    /// Giving its groups away; stopped once empty.
    Draining,
}

/// What the policy asks the driver to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Bring a standby node into service; answer with `handle_node_ready`.
    StartNode {
        /// The node.
        node: InstanceId,
    },
    /// Migrate a group; answer with `handle_migration_done`.
    Migrate {
        /// The group.
        external: Ipv4Addr,
        /// Its node.
        from: InstanceId,
        /// The new node.
        to: InstanceId,
        /// How.
        algorithm: Algorithm,
    },
    /// The node holds no group and may be stopped (no answer expected).
    StopNode {
        /// The node.
        node: InstanceId,
    },
}

/// Why the policy acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A node above `high` for `sustain`.
    Overload,
    /// No node had room: a standby node is brought into service.
    ScaleOut,
    /// Every node below `low`: one node is drained and stopped.
    ScaleIn,
}

/// One decision, for the status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When (driver's clock, ns).
    pub at_ns: u64,
    /// Why.
    pub reason: Reason,
    /// What.
    pub action: Action,
}

/// Counters of the policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleCounters {
    /// Migrations asked for.
    pub migrations: u64,
    /// Of which reported failed or timed out.
    pub migrations_failed: u64,
    /// Nodes started.
    pub scale_outs: u64,
    /// Nodes drained and stopped.
    pub scale_ins: u64,
    /// Times an overloaded node could not be relieved (no room, no standby, or one group).
    pub overload_unrelieved: u64,
    /// Times an action was due but the rate limit held it back.
    pub rate_limited: u64,
    /// Actions given up after `action_timeout_ms`.
    pub timeouts: u64,
}

/// What `flowshift status` shows of the policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleStatus {
    /// Whether it acts.
    pub enabled: bool,
    /// Each node's state and last load.
    pub nodes: Vec<(InstanceId, NodeState, f64)>,
    /// The action in flight.
    pub in_flight: Option<Action>,
    /// Counters.
    pub counters: AutoscaleCounters,
    /// The last decisions, oldest first (at most [`RECENT_DECISIONS`]).
    pub recent: Vec<Decision>,
}

#[derive(Clone, Debug)]
struct NodeTrack {
    state: NodeState,
    load: f64,
    groups: Vec<(Ipv4Addr, f64)>,
    over_since: Option<Instant>,
    under_since: Option<Instant>,
}

/// The policy. See the module documentation.
#[derive(Debug)]
pub struct Autoscaler {
    cfg: AutoscaleConfig,
    nodes: BTreeMap<InstanceId, NodeTrack>,
    in_flight: Option<(Action, Instant)>,
    quiet_until: Instant,
    started: VecDeque<Instant>,
    rested: BTreeMap<Ipv4Addr, Instant>,
    /// After a scale-out, the overloaded node the new node is for.
    relieve_after_start: Option<InstanceId>,
    actions: VecDeque<Action>,
    recent: VecDeque<Decision>,
    counters: AutoscaleCounters,
}

mod decide;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Autoscaler {
    /// A policy over nodes `active` (in service at start) and `standby`.
    pub fn new(
        cfg: AutoscaleConfig,
        active: &[InstanceId],
        standby: &[InstanceId],
    ) -> Result<Self, String> {
        cfg.validate()?;
        let track = |state| NodeTrack {
            state,
            load: 0.0,
            groups: Vec::new(),
            over_since: None,
            under_since: None,
        };
        let mut nodes = BTreeMap::new();
        for &n in active {
            nodes.insert(n, track(NodeState::Active));
        }
        for &n in standby {
            if nodes.insert(n, track(NodeState::Standby)).is_some() {
                return Err(format!("autoscale: node {n} is both active and standby"));
            }
        }
        Ok(Autoscaler {
            cfg,
            nodes,
            in_flight: None,
            quiet_until: Instant::ZERO,
            started: VecDeque::new(),
            rested: BTreeMap::new(),
            relieve_after_start: None,
            actions: VecDeque::new(),
            recent: VecDeque::new(),
            counters: AutoscaleCounters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AutoscaleConfig {
        &self.cfg
    }

    /// A node's state, if the policy knows it.
    pub fn node_state(&self, node: InstanceId) -> Option<NodeState> {
        self.nodes.get(&node).map(|t| t.state)
    }

    /// A node's load as the policy computes it (1.0 = its capacity).
    pub fn node_load(&self, l: &NodeLoad) -> f64 {
        let c = &self.cfg;
        (l.pps / c.capacity_pps)
            .max(l.sessions as f64 / c.capacity_sessions as f64)
            .max(l.busy.clamp(0.0, 1.0))
    }

    fn group_load(&self, g: &GroupLoad) -> f64 {
        let c = &self.cfg;
        (g.pps / c.capacity_pps).max(g.sessions as f64 / c.capacity_sessions as f64)
    }

    /// New load figures (nodes not listed keep their last figures); then decides.
    pub fn handle_load(&mut self, now: Instant, loads: &[NodeLoad]) {
        for l in loads {
            let load = self.node_load(l);
            let groups = l
                .groups
                .iter()
                .map(|g| (g.external, self.group_load(g)))
                .collect();
            let (high, low) = (self.cfg.high, self.cfg.low);
            let Some(t) = self.nodes.get_mut(&l.node) else {
                continue;
            };
            t.load = load;
            t.groups = groups;
            t.over_since = (load > high).then(|| t.over_since.unwrap_or(now));
            t.under_since = (load < low).then(|| t.under_since.unwrap_or(now));
        }
        self.decide(now);
    }

    /// A node asked for with [`Action::StartNode`] is in service.
    pub fn handle_node_ready(&mut self, now: Instant, node: InstanceId) {
        if let Some(t) = self.nodes.get_mut(&node)
            && t.state == NodeState::Starting
        {
            t.state = NodeState::Active;
            t.load = 0.0;
            t.groups.clear();
            if matches!(self.in_flight, Some((Action::StartNode { node: n }, _)) if n == node) {
                self.in_flight = None;
            }
            // Relieve the node it was started for at once (no cool-down in between).
            self.decide(now);
        }
    }

    /// A migration asked for with [`Action::Migrate`] ended (`ok`: completed).
    pub fn handle_migration_done(&mut self, now: Instant, external: Ipv4Addr, ok: bool) {
        if let Some((
            Action::Migrate {
                external: e,
                from,
                to,
                ..
            },
            _,
        )) = &self.in_flight
            && *e == external
        {
            let (from, to) = (*from, *to);
            self.in_flight = None;
            self.quiet_until = now + ms(self.cfg.cooldown_ms);
            if ok {
                self.rested
                    .insert(external, now + ms(self.cfg.group_rest_ms));
                // Move the group in the books until the next load report says otherwise.
                let moved = self.nodes.get_mut(&from).and_then(|t| {
                    let i = t.groups.iter().position(|g| g.0 == external)?;
                    let g = t.groups.remove(i);
                    t.load = (t.load - g.1).max(0.0);
                    Some(g)
                });
                if let (Some(g), Some(t)) = (moved, self.nodes.get_mut(&to)) {
                    t.load += g.1;
                    t.groups.push(g);
                }
            } else {
                self.counters.migrations_failed += 1;
            }
            self.decide(now);
        }
    }

    /// Gives up an action in flight for longer than `action_timeout_ms` (call regularly; also
    /// done by [`handle_load`](Self::handle_load)).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.decide(now);
    }

    fn expire(&mut self, now: Instant) {
        if let Some((a, since)) = &self.in_flight
            && now >= *since + ms(self.cfg.action_timeout_ms)
        {
            self.counters.timeouts += 1;
            if let Action::StartNode { node } = a
                && let Some(t) = self.nodes.get_mut(node)
            {
                t.state = NodeState::Standby;
            }
            if matches!(a, Action::Migrate { .. }) {
                self.counters.migrations_failed += 1;
            }
            self.in_flight = None;
            self.quiet_until = now + ms(self.cfg.cooldown_ms);
        }
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The policy's state for `flowshift status`.
    pub fn status(&self) -> AutoscaleStatus {
        AutoscaleStatus {
            enabled: self.cfg.enabled,
            nodes: self
                .nodes
                .iter()
                .map(|(&n, t)| (n, t.state, t.load))
                .collect(),
            in_flight: self.in_flight.as_ref().map(|(a, _)| a.clone()),
            counters: self.counters.clone(),
            recent: self.recent.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests;
