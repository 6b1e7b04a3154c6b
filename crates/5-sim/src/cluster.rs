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

use crate::packet::ElementId;
use crate::sim::{AppId, Sim};
use flowshift_control::orchestrator::Orchestrator;
use flowshift_migration::{Algorithm, InstanceId, MigrationReport, Params};
use flowshift_nat::NatConfig;
use flowshift_wire::Instant;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

mod collect;
mod drive;
mod setup;

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
/// Milliseconds of virtual time.
fn ms(t: Instant) -> f64 {
    t.as_nanos() as f64 / 1e6
}

/// A run's network: the simulator and the handles the run and the collection need.
struct Net {
    sim: Sim,
    na: ElementId,
    nb: ElementId,
    sw: ElementId,
    orch: Orchestrator,
    sinks: Vec<AppId>,
    /// Delay samples of data packets at the servers: (sent ns, one-way delay ns).
    samples: Rc<RefCell<Vec<(u64, u64)>>>,
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
    let mut net = setup::build(cfg)?;
    let (controller, migration) = drive::drive(&mut net, cfg, progress)?;
    collect::collect(&net, cfg, controller, migration)
}
