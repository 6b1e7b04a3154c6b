//! Layer 5 of flowshift: one deterministic driver for two migration [`Instance`]s in virtual
//! time, for tests and experiments (the migration protocol tests in `tests/`, and
//! `flowshift experiment precopy`).
//!
//! What it models, and nothing more:
//!
//! * **The switch** forwards by the controller's rules ([`flowshift_control::rules`]): the
//!   table the [`Orchestrator`] computes for the two instances' groups. A packet handed to
//!   [`Harness::inject`] enters from the inside port if its source lies in a group's
//!   subscriber prefix, else from the outside port. Rule changes take effect at once; their
//!   barrier is confirmed [`HarnessConfig::barrier_delay`] later.
//! * **The controller** is the real [`Orchestrator`]: [`Harness::migrate`] asks it to move a
//!   group, and the harness carries out its commands (start the migration, update the switch,
//!   confirm the barrier, `cutover_done`) and feeds it every instance event.
//! * **The state-transfer link**, one per direction: a serialization delay per byte, a fixed
//!   one-way delay, and seeded faults ([`Faults`]: loss, duplication, reordering jitter, a
//!   cut). **The chain path**: FIFO with a fixed delay; [`Harness::chain_drop`] loses the next
//!   chained packets.
//! * **Time** jumps from one scheduled thing to the next ([`Harness::step`]): chained packets
//!   first, then transfer frames, barrier replies, and the instances' timers (A before B) at
//!   equal times. A caller with its own events (a workload) interleaves them with
//!   [`Harness::next_time`] and [`Harness::step`]; its own events come after the harness's at
//!   equal times.
//!
//! After every call into an instance the harness drains both through
//! [`Instance::drain`]; what leaves the cluster goes to the caller's [`Observer`]. Nothing is
//! sent anywhere: everything happens in-process. Same configuration and seed, same run.

#![deny(missing_docs)]

mod clock;
mod links;
mod pump;

use flowshift_control::orchestrator::{AbortStage, ControlError, Orchestrator, Rehome};
use flowshift_control::rules::{self, Action, GroupRoute, InstancePort, Rule, Topology};
use flowshift_migration::{
    Algorithm, Direction, Ingress, Instance, InstanceId, MigrationEvent, MigrationId, Params,
};
use flowshift_nat::DropReason;
use flowshift_wire::Instant;
use flowshift_wire::packet::{field, get_addr};
use links::Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

pub use links::Faults;

/// Instance A (the source in the usual set-up).
pub const A: InstanceId = InstanceId(1);
/// Instance B.
pub const B: InstanceId = InstanceId(2);

/// Switch ports of the modelled switch.
const INSIDE_PORT: u32 = 1;
const OUTSIDE_PORT: u32 = 2;
/// Steps at one instant before [`Harness::advance`] reports a livelock.
const MAX_STEPS_AT_ONE_INSTANT: u64 = 1_000_000;
/// Most frames on the transfer links together, and most packets on the chain path.
pub const MAX_IN_FLIGHT: usize = 1 << 20;

/// The links' and the switch's timing, and the fault injection.
#[derive(Clone, Debug)]
pub struct HarnessConfig {
    /// Seed of the fault injection.
    pub seed: u64,
    /// One-way delay of the state-transfer link (default 500 us).
    pub transfer_delay: Duration,
    /// Serialization time per byte on the state-transfer link, in ns (default 0: no rate
    /// limit); 8e3 / Mbit/s.
    pub transfer_ns_per_byte: f64,
    /// One-way delay of the chain path (default 100 us).
    pub chain_delay: Duration,
    /// From a switch update to its barrier reply (default 2 ms).
    pub barrier_delay: Duration,
    /// Faults of the state-transfer link.
    pub faults: Faults,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        HarnessConfig {
            seed: 1,
            transfer_delay: Duration::from_micros(500),
            transfer_ns_per_byte: 0.0,
            chain_delay: Duration::from_micros(100),
            barrier_delay: Duration::from_millis(2),
            faults: Faults::default(),
        }
    }
}

/// What leaves the cluster, for the caller. Every method has a default that ignores it.
pub trait Observer {
    /// A translated packet left instance `by` towards `dir`.
    fn sent(&mut self, at: Instant, by: InstanceId, dir: Direction, pkt: Vec<u8>) {
        let _ = (at, by, dir, pkt);
    }
    /// Instance `by` dropped a packet (its instances report drops: `report_drops`).
    fn dropped(&mut self, at: Instant, by: InstanceId, reason: DropReason, pkt: Vec<u8>) {
        let _ = (at, by, reason, pkt);
    }
    /// Instance `from` chained a packet to `to` (before [`Harness::chain_drop`] applies).
    fn chained(&mut self, at: Instant, from: InstanceId, to: InstanceId, pkt: &[u8]) {
        let _ = (at, from, to, pkt);
    }
    /// Instance `from` sent a transfer frame of `len` bytes to `to` (before faults apply).
    fn frame(&mut self, at: Instant, from: InstanceId, to: InstanceId, len: usize) {
        let _ = (at, from, to, len);
    }
    /// An instance event (the orchestrator gets it too).
    fn event(&mut self, at: Instant, on: InstanceId, event: &MigrationEvent) {
        let _ = (at, on, event);
    }
    /// After every [`Harness::step`]: a place for invariant checks.
    fn stepped(&mut self, now: Instant, a: &Instance, b: &Instance) {
        let _ = (now, a, b);
    }
}

/// An observer that ignores everything.
impl Observer for () {}

/// Why the harness could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The orchestrator refused the request.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The source instance refused to start the migration.
    #[error("start_migration refused: {0}")]
    Start(#[from] flowshift_migration::Error),
    /// The instances are not numbered [`A`] and [`B`].
    #[error("the instances must be {A:?} and {B:?}, not {0:?} and {1:?}")]
    Ids(InstanceId, InstanceId),
    /// The orchestrator accepted the request but issued no start (a bug).
    #[error("the orchestrator did not start the migration of {0}")]
    NotStarted(Ipv4Addr),
    /// Time stopped advancing.
    #[error("no progress of time at {0:?} (livelock)")]
    Livelock(Instant),
}

/// The harness's own counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HarnessStats {
    /// Injected packets no switch rule sent to an instance (dropped).
    pub unsteered: u64,
    /// Packets steered to an instance.
    pub injected: u64,
    /// Transfer frames an instance refused as malformed.
    pub frames_malformed: u64,
    /// Transfer frames lost by fault injection.
    pub frames_lost: u64,
    /// Duplicated transfer frames.
    pub frames_duplicated: u64,
    /// Chained packets lost by [`Harness::chain_drop`].
    pub chain_dropped: u64,
    /// Frames and chained packets refused because their link already held
    /// [`MAX_IN_FLIGHT`] (dropped).
    pub queue_full: u64,
    /// Outputs for an instance outside the pair (dropped).
    pub unrouted: u64,
    /// Orchestrator commands an instance refused (`cutover_done`, `start_migration`): a bug.
    pub commands_refused: u64,
    /// Transfer frames and chained packets lost because a process restarted.
    pub lost_in_restart: u64,
    /// Mappings dropped by `release_group` interventions.
    pub mappings_released: u64,
}

/// See the crate documentation. `O` observes what leaves the cluster.
pub struct Harness<O> {
    /// Instance A.
    pub a: Instance,
    /// Instance B.
    pub b: Instance,
    /// Virtual time.
    pub now: Instant,
    /// Timing and faults (may be changed between calls).
    pub cfg: HarnessConfig,
    /// The next this many chained packets are lost on the chain path.
    pub chain_drop: u64,
    /// The caller's observer.
    pub obs: O,
    orch: Orchestrator,
    topo: Topology,
    table: Vec<Rule>,
    /// Parameters of requested migrations, until the orchestrator starts them.
    params: BTreeMap<Ipv4Addr, Params>,
    /// The result of the last `StartMigration` command.
    started: Option<Result<MigrationId, HarnessError>>,
    /// Barrier replies due: (at, order) -> token.
    barriers: BTreeMap<(Instant, u64), u64>,
    net: Net,
    stats: HarnessStats,
}

impl<O: Observer> Harness<O> {
    /// Two instances (ids [`A`] and [`B`]) behind one switch, each owning the groups its NAT
    /// is configured with; time starts at `now`.
    pub fn new(
        a: Instance,
        b: Instance,
        now: Instant,
        cfg: HarnessConfig,
        obs: O,
    ) -> Result<Harness<O>, HarnessError> {
        if (a.id(), b.id()) != (A, B) {
            return Err(HarnessError::Ids(a.id(), b.id()));
        }
        let port = |id: InstanceId| InstancePort {
            port: 10 + u32::from(id.0),
            mac: [2, 0, 0, 0, 0, id.0 as u8],
        };
        let topo = Topology {
            inside_port: INSIDE_PORT,
            outside_port: OUTSIDE_PORT,
            instances: BTreeMap::from([(A, port(A)), (B, port(B))]),
        };
        let mut groups = Vec::new();
        for (inst, id) in [(&a, A), (&b, B)] {
            let nat = inst.nat();
            for g in nat.group_ids() {
                if let Ok(c) = nat.group_config(g) {
                    groups.push(GroupRoute {
                        external: c.external,
                        subscribers: c.subscribers,
                        owner: id,
                    });
                }
            }
        }
        let orch = Orchestrator::new(topo.clone(), groups)?;
        Ok(Harness {
            table: orch.table().to_vec(),
            net: Net::new(cfg.seed),
            a,
            b,
            now,
            cfg,
            chain_drop: 0,
            obs,
            orch,
            topo,
            params: BTreeMap::new(),
            started: None,
            barriers: BTreeMap::new(),
            stats: HarnessStats::default(),
        })
    }

    /// Instance `id` (A unless `id` is B).
    pub fn inst(&mut self, id: InstanceId) -> &mut Instance {
        if id == B { &mut self.b } else { &mut self.a }
    }

    /// The controller.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orch
    }

    /// The switch's rules now.
    pub fn table(&self) -> &[Rule] {
        &self.table
    }

    /// The harness's counters.
    pub fn stats(&self) -> &HarnessStats {
        &self.stats
    }

    /// The instance the switch sends `pkt` to (see the crate documentation), if any.
    pub fn steer(&self, pkt: &[u8]) -> Option<InstanceId> {
        let src = Ipv4Addr::from(get_addr(pkt, field::IPV4_SRC)?);
        let dst = Ipv4Addr::from(get_addr(pkt, field::IPV4_DST)?);
        let inside = self
            .orch
            .groups()
            .iter()
            .any(|g| g.subscribers.contains(&src));
        let port = if inside { INSIDE_PORT } else { OUTSIDE_PORT };
        let out = rules::lookup(&self.table, port, [0; 6], src, dst)?
            .actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Output(p) => Some(*p),
                Action::SetEthDst(_) => None,
            })?;
        self.topo
            .instances
            .iter()
            .find(|(_, p)| p.port == out)
            .map(|(id, _)| *id)
    }

    /// The switch delivers `pkt` (an IPv4 packet) now; false if no rule sends it to an
    /// instance (counted in `unsteered`).
    pub fn inject(&mut self, pkt: Vec<u8>) -> bool {
        let Some(to) = self.steer(&pkt) else {
            self.stats.unsteered += 1;
            return false;
        };
        self.stats.injected += 1;
        let now = self.now;
        self.inst(to).handle_packet(now, pkt, (), Ingress::Switch);
        self.pump();
        true
    }

    /// Asks the orchestrator to move the group of `external` to instance `to`; the harness
    /// starts it on the owner with `params` and returns its id.
    pub fn migrate(
        &mut self,
        external: Ipv4Addr,
        to: InstanceId,
        algorithm: Algorithm,
        params: Params,
    ) -> Result<MigrationId, HarnessError> {
        self.orch
            .request_migration(self.now, external, to, algorithm)?;
        self.params.insert(external, params);
        self.started = None;
        self.pump();
        self.started
            .take()
            .unwrap_or(Err(HarnessError::NotStarted(external)))
    }

    /// The process of instance `inst.id()` restarts as `inst` (a fresh instance, with a new
    /// epoch): what the old one held is gone, and so is everything in flight to or from it.
    pub fn restart(&mut self, inst: Instance) -> Result<(), HarnessError> {
        let id = inst.id();
        if id != A && id != B {
            return Err(HarnessError::Ids(id, id));
        }
        let (t, c) = self.net.forget(id);
        self.stats.lost_in_restart += t + c;
        self.net.events.retain(|(on, _)| *on != id);
        *self.inst(id) = inst;
        self.pump();
        Ok(())
    }

    /// The controller gives the group of `external` to `to` because its owner died (see
    /// [`Orchestrator::rehome`]); the harness carries out the switch update and the
    /// interventions.
    pub fn rehome(
        &mut self,
        external: Ipv4Addr,
        to: InstanceId,
        sessions_lost: Option<u64>,
    ) -> Result<Rehome, HarnessError> {
        let r = self.orch.rehome(self.now, external, to, sessions_lost)?;
        self.pump();
        Ok(r)
    }

    /// The controller aborts the migration of `external` (see [`Orchestrator::abort`]).
    pub fn abort(&mut self, external: Ipv4Addr) -> Option<AbortStage> {
        let r = self.orch.abort(self.now, external);
        self.pump();
        r
    }
}
