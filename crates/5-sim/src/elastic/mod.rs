//! Elastic CGNAT in the simulator: nodes 0..N behind the rule switch, tens of groups (an
//! external pool split by [`flowshift_nat::group_layout`]), a load that surges and falls
//! ([`traffic`]), and the real policy ([`flowshift_control::autoscale::Autoscaler`]) and
//! migration driver ([`flowshift_control::orchestrator::Orchestrator`]) deciding and carrying
//! out scale-out, rebalancing and scale-in.
//!
//! ```text
//! subscribers --(10G)-- switch --(10G)-- servers
//!                       | | |
//!                   node 0 .. node N-1     (each pair: a chain link and a transfer link)
//! ```
//!
//! * **Nodes** are NAT elements with a [`Capacity`]: above it they drop packets, counted as
//!   `node_overload`. Node 0 (or the first `active_at_start`) serves every group at start; the
//!   others are standby: out of service, no group. [`Action::StartNode`] puts one in service
//!   `start_delay` later (then `handle_node_ready`); [`Action::StopNode`] takes it out.
//! * **Load** is fed to the policy every `load_interval` from the nodes' own counters:
//!   packets offered (before the capacity check) per node and per group over the interval,
//!   and sessions per group from the NAT. Groups are attributed to the owner the orchestrator
//!   routes them to.
//! * **Measured**: per interval, nodes in service, per-node load, offered packets and
//!   goodput (packets delivered at the ends), losses by class (overload, migration, other);
//!   per migration its algorithm, states moved and expired in idle, longest freeze, downtime
//!   and losses; per node the longest stretch offered above capacity.
//!
//! [`Action::StartNode`]: flowshift_control::autoscale::Action::StartNode
//! [`Action::StopNode`]: flowshift_control::autoscale::Action::StopNode

mod run;
pub mod traffic;

pub use run::run;

use crate::nat_element::Capacity;
use flowshift_control::autoscale::{AutoscaleConfig, AutoscaleCounters, Decision, NodeState};
use flowshift_migration::{Algorithm, InstanceId, Params};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;
use traffic::{Profile, TrafficConfig};

/// Most nodes a scenario may have.
pub const MAX_NODES: u16 = 16;

/// How the cluster reacts to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// The policy, migrating with idle + freeze-and-copy.
    FreezeCopy,
    /// The policy, migrating with stop-and-copy.
    StopCopy,
    /// The policy, migrating with pre-copy.
    PreCopy,
    /// No policy: the nodes in service at start carry everything.
    None,
}

impl Scaling {
    /// The policy's algorithm, if it acts.
    pub fn algorithm(self) -> Option<Algorithm> {
        match self {
            Scaling::FreezeCopy => Some(Algorithm::FreezeCopy),
            Scaling::StopCopy => Some(Algorithm::StopCopy),
            Scaling::PreCopy => Some(Algorithm::PreCopy),
            Scaling::None => None,
        }
    }

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Scaling::FreezeCopy => "freeze_copy",
            Scaling::StopCopy => "stop_copy",
            Scaling::PreCopy => "pre_copy",
            Scaling::None => "no_scaling",
        }
    }
}

/// The scenario's knobs (see [`ElasticConfig::surge`] for the defaults).
#[derive(Clone, Debug, Serialize)]
pub struct ElasticConfig {
    /// Seed of the whole run.
    pub seed: u64,
    /// How the cluster reacts.
    pub scaling: Scaling,
    /// Nodes in all (1..=[`MAX_NODES`]).
    pub nodes: u16,
    /// Nodes in service at start (the first ones; the groups are dealt round-robin over them).
    pub active_at_start: u16,
    /// External pool.
    pub pool: Ipv4Net,
    /// Subscriber prefix, split over the groups.
    pub subscribers: Ipv4Net,
    /// Groups (a power of two, at most the pool's size).
    pub groups: u32,
    /// Each node's packet budget.
    pub capacity: Capacity,
    /// The subscribers' behaviour.
    pub traffic: TrafficConfig,
    /// The policy (`enabled` and `algorithm` are set from `scaling`).
    pub autoscale: AutoscaleConfig,
    /// From `StartNode` to the node in service.
    pub start_delay: Duration,
    /// Load reports to the policy (and timeline samples) every this long.
    pub load_interval: Duration,
    /// Length of the run.
    pub duration: Duration,
    /// Controller reaction granularity.
    pub control_step: Duration,
    /// Time from a switch update to its effect (and barrier reply).
    pub switch_update_delay: Duration,
    /// State-transfer links: rate (bit/s).
    pub transfer_bps: u64,
    /// State-transfer links: one-way delay.
    pub transfer_delay: Duration,
    /// Migration parameters.
    pub params: Params,
}

impl ElasticConfig {
    /// The default scenario: 4 nodes of 10,000 packets/s (one in service), 32 groups of a /26
    /// pool over 100.64.0.0/16, a load at 35% of one node that ramps up 5x over 15 s from
    /// 15 s, holds 40 s, falls back over 15 s, and 65 s more to scale in.
    pub fn surge(scaling: Scaling, seed: u64) -> Self {
        let capacity = Capacity {
            pps: 10_000.0,
            burst: 200.0,
        };
        let autoscale = AutoscaleConfig {
            enabled: true,
            capacity_pps: capacity.pps,
            capacity_sessions: 1_000_000,
            sustain_ms: 1_000,
            cooldown_ms: 500,
            group_rest_ms: 10_000,
            max_migrations_per_minute: 60,
            action_timeout_ms: 20_000,
            ..AutoscaleConfig::default()
        };
        let params = Params {
            batch_size: 512,
            batch_max_bytes: 60 << 10,
            batches_in_flight: if scaling == Scaling::FreezeCopy { 1 } else { 8 },
            idle_sample_interval: Duration::from_millis(100),
            idle_window_samples: 4,
            idle_max: Duration::from_secs(1),
            drain: Duration::from_millis(3),
            ..Params::default()
        };
        ElasticConfig {
            seed,
            scaling,
            nodes: 4,
            active_at_start: 1,
            pool: Ipv4Net::new(Ipv4Addr::new(203, 0, 113, 0), 26).expect("valid prefix"),
            subscribers: Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 16).expect("valid prefix"),
            groups: 32,
            capacity,
            traffic: TrafficConfig {
                base_arrivals: 45.0,
                profile: Profile::Step {
                    rise_at: Duration::from_secs(15),
                    ramp: Duration::from_secs(15),
                    hold: Duration::from_secs(40),
                    factor: 5.0,
                },
                mean_duration: Duration::from_secs(4),
                conn_pps: 10.0,
                subscribers_per_group: 8,
                servers: 64,
                group_skew: 0.5,
                max_connections: 100_000,
            },
            autoscale,
            start_delay: Duration::from_secs(2),
            load_interval: Duration::from_millis(500),
            duration: Duration::from_secs(150),
            control_step: Duration::from_millis(1),
            switch_update_delay: Duration::from_millis(1),
            transfer_bps: 1_000_000_000,
            transfer_delay: Duration::from_micros(100),
            params,
        }
    }
}

/// One node at one sample.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSample {
    /// The node.
    pub node: InstanceId,
    /// In service (carrying or allowed to carry groups).
    pub in_service: bool,
    /// The policy's view of it (standby, starting, active, draining).
    pub state: Option<NodeState>,
    /// Packets offered per second over the interval.
    pub pps: f64,
    /// Sessions at the sample.
    pub sessions: u64,
    /// Load as the policy computes it (1.0 = capacity).
    pub load: f64,
    /// Groups routed to it.
    pub groups: u32,
    /// Packets it dropped for lack of capacity over the interval.
    pub overload_drops: u64,
}

/// The cluster at one sample (the end of an interval).
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Time (s).
    pub t_s: f64,
    /// Nodes in service.
    pub in_service: u16,
    /// Every node.
    pub nodes: Vec<NodeSample>,
    /// Packets sent by both ends per second over the interval.
    pub offered_pps: f64,
    /// Packets delivered to both ends per second over the interval.
    pub goodput_pps: f64,
    /// Packets dropped by overloaded nodes over the interval.
    pub lost_overload: u64,
    /// Packets lost because of migrations over the interval.
    pub lost_migration: u64,
    /// Other drops over the interval.
    pub lost_other: u64,
}

/// One migration the policy asked for.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MigrationRecord {
    /// The group.
    pub external: Option<Ipv4Addr>,
    /// Source node.
    pub from: InstanceId,
    /// Destination node.
    pub to: InstanceId,
    /// Algorithm.
    pub algorithm: Option<Algorithm>,
    /// Requested at (s).
    pub requested_s: f64,
    /// Ended at (s), if it did.
    pub ended_s: Option<f64>,
    /// Completed (false: refused, aborted or still running at the end).
    pub completed: bool,
    /// Mappings moved.
    pub states_moved: u32,
    /// Mappings that expired on the source in the idle phase.
    pub states_expired_idle: u32,
    /// Mappings on the source at the start.
    pub mappings_at_start: u32,
    /// Longest freeze of a mapping (freeze-copy) or the downtime (stop-copy), ms.
    pub max_freeze_ms: f64,
    /// Stop-copy / pre-copy: group halted, ms.
    pub halted_ms: f64,
    /// Packets lost because of it, by cause (both ends).
    pub lost_by_cause: BTreeMap<String, u64>,
    /// Protocol bytes the source sent.
    pub bytes: u64,
}

/// A node life-cycle event.
#[derive(Clone, Debug, Serialize)]
pub struct NodeEvent {
    /// When (s).
    pub t_s: f64,
    /// The node.
    pub node: InstanceId,
    /// `start_requested`, `in_service` or `stopped`.
    pub what: &'static str,
}

/// Everything measured in one run.
#[derive(Clone, Debug, Serialize)]
pub struct ElasticRun {
    /// The configuration.
    pub config: ElasticConfig,
    /// Every `load_interval`.
    pub samples: Vec<Sample>,
    /// The policy's migrations.
    pub migrations: Vec<MigrationRecord>,
    /// Node starts and stops.
    pub node_events: Vec<NodeEvent>,
    /// The policy's decisions (all of them, in order).
    pub decisions: Vec<Decision>,
    /// The policy's counters at the end.
    pub policy: Option<AutoscaleCounters>,
    /// Packets sent by both ends.
    pub sent: u64,
    /// Packets delivered to both ends.
    pub delivered: u64,
    /// Drops by cause (simulator names, `element:<reason>` for NAT and node drops).
    pub drops_by_cause: BTreeMap<String, u64>,
    /// Packets dropped by overloaded nodes.
    pub lost_overload: u64,
    /// Packets lost because of migrations.
    pub lost_migration: u64,
    /// Most nodes in service at once.
    pub max_in_service: u16,
    /// Per node, the longest stretch of consecutive intervals offered more than its
    /// capacity (s).
    pub longest_overload_s: BTreeMap<InstanceId, f64>,
    /// Connections opened, and refused at the subscribers' bound.
    pub connections: (u64, u64),
    /// Simulated events.
    pub events: u64,
    /// Ledger and NAT table checks (`Ok` or the first problem).
    pub invariants: Result<(), String>,
}

/// Why a run could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

pub(crate) fn cfg_err<E: std::fmt::Display>(e: E) -> ElasticError {
    ElasticError::Config(e.to_string())
}
