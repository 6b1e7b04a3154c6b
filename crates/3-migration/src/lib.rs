//! Layer 3 of flowshift: live migration of a NAT group's flow state between instances,
//! sans-IO.
//!
//! An [`Instance`] wraps one [`flowshift_nat::Nat`] and runs the migrations it takes part in,
//! as source or destination. It reads no clock, socket or random source: the driver (the
//! simulator, the Linux node, the two-instance harness) passes time and input in and takes
//! actions out:
//!
//! | in | out |
//! |---|---|
//! | [`Instance::handle_packet`] / [`Instance::handle_batch`]: data packets from the switch or chained by a peer | [`Instance::poll_output`]: packets to send, or to chain to a peer |
//! | [`Instance::handle_transfer`]: bytes from the state-transfer channel | [`Instance::poll_transmit`]: bytes for the channel |
//! | [`Instance::handle_timeout`] once `now >= `[`Instance::poll_timeout`] | [`Instance::poll_event`]: phase changes and progress for the controller |
//! | [`Instance::start_migration`], [`Instance::cutover_done`], [`Instance::abort`]: controller commands | [`Instance::report`]: a serializable summary |
//!
//! Driver contract: after every `handle_*` call or command, drain `poll_output`,
//! `poll_transmit` and `poll_event` until they return `None`, then re-read `poll_timeout`;
//! [`Instance::drain`] does exactly that into a [`Driver`].
//!
//! **Per-packet metadata.** `Instance<M>` carries a driver-defined tag `M` (a small `Copy`
//! type; `()` by default, which costs nothing) beside every data packet, as quinn-proto's
//! `Transmit` keeps metadata beside the payload: the driver gives it with the packet
//! (`handle_packet(now, pkt, meta, ingress)`, batches of `(packet, meta)`), and the instance
//! hands it back unchanged in the [`Output`] the packet ends in, whether translated at once,
//! held (frozen mapping, prepare buffer, destination hold), re-processed, chained or dropped.
//! The instance never reads it and never serializes it: a chained packet leaves with its tag
//! in [`Output::Chain`], and the peer's instance gets whatever tag its driver gives it on
//! arrival (the simulator moves the same tag along its chain link; the Linux node rebuilds
//! its offload tag from the chained frame's virtio-net header). Transfer frames carry no tag.
//! The Linux node keeps each packet's offload data (virtio-net header, original addresses and
//! checksum seed) in the tag; the simulator keeps its packet identity (ledger id, flow,
//! sequence, send time) in it. [`Instance::for_each_held`] lists the packets (and tags) an
//! instance keeps between calls. Build a tagged instance with [`Instance::with_meta`];
//! [`Instance::new`] is the untagged one.
//!
//! Frames are self-delimiting ([`proto::frame_len`]): send each as a datagram, or back to back
//! on a stream. The channel may lose, duplicate or reorder frames; the protocol recovers (see
//! [`proto`] and the channel's retransmission settings in [`MigrationConfig`]). Chained packets
//! should travel on a FIFO path; the destination counts them (see cutover below).
//!
//! # Algorithms (the source drives, the destination reacts)
//!
//! All start with *Prepare*: the source sends the group's configuration and the port blocks its
//! subscribers hold; the destination adds the group and reserves those blocks, so no external
//! (address, port) can ever be bound on both instances.
//!
//! * **Stop-and-copy** ([`Algorithm::StopCopy`]): after `PrepareAck` the source halts the group
//!   (its packets are dropped, counted `GroupHalted`: the baseline's downtime), sends every
//!   mapping in batches, which the destination imports into the still-halted group, then
//!   `Commit`; on `CommitAck` the source removes its copies, starts chaining the group's packets
//!   to the destination and emits [`MigrationEvent::ReadyForCutover`].
//! * **Pre-copy** ([`Algorithm::PreCopy`]): the source keeps serving; round 0 copies every
//!   mapping, each later round copies the *dirty* mappings (see below), the new ones, and
//!   deletes those that died; the destination only *stages* them. After a round that copied at
//!   most `precopy_stop_threshold` mappings (or `precopy_max_rounds` rounds), a final round
//!   runs with the group halted, then `Commit`: the destination imports all staged state at
//!   once, and the source proceeds as in stop-and-copy. **Dirty** means: the mapping's most
//!   recent packet time ([`flowshift_nat::MappingInfo::last_seen`]) is at or after the time it
//!   was last copied, or its session count changed. Every translated packet of a mapping
//!   refreshes that time (outbound always; inbound too unless the NAT's `inbound_refresh` is
//!   off, in which case an inbound-only TCP state change is not seen as dirty).
//! * **Idle + freeze-and-copy** ([`Algorithm::FreezeCopy`], the poster's): the source puts the
//!   group in `Draining` mode *when it sends Prepare* (so the block set it sends is final: it
//!   creates no mapping afterwards), buffers the packets that need a new mapping until
//!   `PrepareAck`, then chains them, and every later one, to the destination, which creates
//!   the mappings (only from blocks the source did not hold). *Idle phase*: every
//!   `idle_sample_interval` the source counts its remaining mappings; it leaves the phase when
//!   the death rate over the last `idle_window_samples` samples falls below
//!   `idle_rate_threshold`, after `idle_max`, or once at most `idle_floor` remain. A mapping
//!   counts as alive until the NAT expires it, so TCP mappings in a transitory state
//!   (half-open, closed both ways, reset) count as alive for their 4-minute transitory timeout:
//!   they still hold a port (with no death at all since the phase began, the rate is zero and
//!   the phase ends at the first sample). *Freeze-and-copy*: repeatedly freeze up to
//!   `batch_size` mappings and at most the *freeze budget* of record bytes in flight,
//!   **whole port blocks at a time**, idlest block first (ordered once, when the phase starts,
//!   by the most recent packet among the block's mappings), export them and send the batch. A
//!   block always travels in one batch (a block with more than `batch_size` mappings travels
//!   alone): once the destination imports a mapping of a block, that block belongs to the
//!   subscriber there and the destination may allocate its free ports, so the source must not
//!   keep any other mapping in it. Per-flow freeze time is thus bounded by one block's transfer
//!   time. The freeze budget bounds that time whatever the total state: it starts at
//!   `freeze_budget_min` and, after every acknowledged batch, is scaled by how far that batch's
//!   freeze (send to acknowledgement) was from three quarters of `freeze_target` (at most
//!   halved or doubled per batch), so the bytes in flight track what the measured transfer
//!   rate moves within the target. Packets that touch a frozen mapping come back from the NAT as `Hold` and
//!   are buffered (bounded; overflow is a counted `FreezeBufferFull` drop); on the batch's
//!   acknowledgement the source chains the buffered packets, in arrival order, before any
//!   later packet of those flows, and marks the mappings moved: a later packet of theirs is
//!   chained at once, and `handle_timeout` removes them `REMOVE_SLICE_SESSIONS` sessions per
//!   call (so the packet thread never spends a whole batch's removal in one call). When it
//!   holds nothing more of the group it emits `ReadyForCutover`.
//!
//! # Cutover and ordering
//!
//! The controller redirects the switch, waits for the barrier, then calls
//! [`Instance::cutover_done`] on the source. The source sends `Cutover` and keeps chaining what
//! still arrives. Once it has chained no packet of the group for `Params::chain_quiet` (packets
//! that were in flight from the switch when the barrier confirmed the redirect), it sends the
//! *end-of-chain marker* `ChainEnd`, which carries the number of packets it has ever chained to
//! the destination. The destination *holds every packet of the group arriving from the switch
//! from `Prepare` on* (before the redirect the switch sends it none, so anything that arrives
//! has overtaken packets still travelling through the source), and releases them in arrival
//! order as soon as it has `ChainEnd` and has received at least that many chained packets from
//! the source (nothing older can then still be in flight on a FIFO chain path), or after
//! `cutover_hold_max` if chained packets were lost. A straggler chained after the marker is
//! still delivered and counted (`chained_after_marker`). After `Params::drain` the source
//! forgets the group and sends `Done`; on `Done` the destination returns the reserved blocks to
//! its pool and completes once the chained packets `Done` announces have arrived.
//!
//! # Abort and failures
//!
//! [`Instance::abort`] **reverts** while the destination certainly holds nothing it would keep:
//! stop-copy and pre-copy before `Commit` was sent; freeze-copy before the first batch was
//! acknowledged and before any packet was chained. The source unfreezes, resumes the group
//! (`Active`), re-processes every buffered packet itself, and sends `Abort`; the destination
//! removes whatever it installed or staged for the migration and the group. Later, reverting
//! could lose or duplicate mappings, so `abort` instead **completes forward** as fast as it can
//! (idle phase skipped, pre-copy rounds cut short) and reports [`AbortOutcome::CompletingForward`].
//!
//! When retransmissions are exhausted the channel has failed and the peer cannot be told
//! anything. The source then keeps everything it still holds (it unfreezes a batch whose
//! acknowledgement never came), reverts fully if it could have reverted, and otherwise leaves
//! the group *split*: it keeps serving its own mappings in `Draining` mode and keeps chaining
//! misses to the destination, which keeps what it installed. The destination, after
//! `peer_timeout` of silence, drops what it staged or imported without a commit (the source
//! reverted those) and keeps the rest. The one case no protocol can settle (two generals) is a
//! batch or commit whose acknowledgement was lost just before the failure: if the destination is
//! in fact alive, those mappings exist on both; the report counts them as `in_doubt_mappings`.
//!
//! # Timeouts, restarts and a dead owner
//!
//! * **Prepare** unanswered for `prepare_timeout` (lost, or a confused peer): the source
//!   reverts (the group is `Active` again), sends `Abort` and reports `Aborted`
//!   (`PrepareTimeout`).
//! * **AwaitCutover** without `cutover_done` for `cutover_timeout`: the source holds nothing
//!   of the group and the destination holds all of it, so there is nothing to revert; the
//!   source keeps chaining every packet of the group to the destination (no loss, one extra
//!   hop) and reports [`MigrationEvent::AwaitingCutover`] every `cutover_timeout`, with what a
//!   restarted controller needs to finish the redirect.
//! * **Destination** with a silent source (`peer_timeout`) or a restarted one (a new epoch, see
//!   [`recovery`]): it ends the migration, keeps only what may be the sole copy (freeze-copy
//!   mappings, a commit), releases the hold, and returns reserved blocks once no process of the
//!   source can hold them.
//! * **Owner dead**: the controller calls [`Instance::adopt_group`] on the new owner and
//!   [`Instance::release_group`] on a live party that must let go (`Rehomed`).

#![deny(missing_docs)]

mod channel;
pub mod config;
mod dest;
mod driver;
mod instance;
pub mod proto;
pub mod recovery;
mod report;
mod source;

pub use channel::ChannelStats;
pub use config::{MigrationConfig, Params, RateMode};
pub use driver::Driver;
pub use instance::Instance;
pub use proto::{AbortReason, Algorithm};
pub use report::{BatchSpan, InstanceCounters, LossCause, MigrationReport, PhaseSpan, RoundReport};

use flowshift_nat::{GroupId, NatError};
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};

/// Identifies an instance in the cluster.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct InstanceId(pub u16);

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u16> for InstanceId {
    fn from(id: u16) -> Self {
        InstanceId(id)
    }
}

impl std::str::FromStr for InstanceId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(InstanceId)
    }
}

/// Identifies a migration cluster-wide: the source instance in the top 16 bits, then the source
/// process's random 32-bit epoch ([`MigrationConfig::epoch`]), then a 16-bit counter of that
/// process (when it wraps the process moves to [`MigrationId::next_epoch`]). Ids are thus
/// unguessable without the epoch and never reused by a restarted process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MigrationId(pub u64);

impl MigrationId {
    /// Composes an id from the source and its low 48 bits (`epoch << 16 | counter`; a
    /// counter below 65536 alone is epoch 0).
    pub const fn new(source: InstanceId, counter: u64) -> Self {
        MigrationId((source.0 as u64) << 48 | (counter & ((1 << 48) - 1)))
    }
    /// Composes an id from the source, its epoch and its counter.
    pub const fn with_epoch(source: InstanceId, epoch: u32, counter: u16) -> Self {
        MigrationId((source.0 as u64) << 48 | (epoch as u64) << 16 | counter as u64)
    }
    /// The source instance.
    pub const fn source(self) -> InstanceId {
        InstanceId((self.0 >> 48) as u16)
    }
    /// The source process's epoch.
    pub const fn epoch(self) -> u32 {
        (self.0 >> 16) as u32
    }
    /// The source's counter within its epoch.
    pub const fn counter(self) -> u16 {
        self.0 as u16
    }
    /// The epoch a process moves to when its counter wraps (a fixed bijective mix, so a peer
    /// can tell it from a restart: [`Instance`] treats it as the same process).
    pub const fn next_epoch(epoch: u32) -> u32 {
        let x = epoch.wrapping_mul(0x9E37_79B1).wrapping_add(0x7F4A_7C15);
        x ^ (x >> 15)
    }
}

/// Where a data packet came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// From the network, through the switch.
    Switch,
    /// Chained, unchanged, by a peer instance that is migrating the packet's group to us.
    Chain {
        /// The peer.
        from: InstanceId,
    },
}

/// Which side of the NAT a translated packet leaves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Towards the subscribers.
    ToInside,
    /// Towards the outside.
    ToOutside,
}

/// An action for the driver. Drops are counted; with `MigrationConfig::report_drops` the
/// dropped packet is also handed back ([`Output::Dropped`]) so a driver can account for it.
///
/// `meta` is the driver's per-packet tag (see [`Instance`]): the value given with the packet to
/// [`Instance::handle_packet`] or [`Instance::handle_batch`], handed back unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<M = ()> {
    /// A translated packet (starts at the IPv4 header).
    Send {
        /// The packet.
        pkt: Vec<u8>,
        /// The driver's tag.
        meta: M,
        /// Where it goes.
        dir: Direction,
    },
    /// An untranslated packet for a peer instance (daisy chain): deliver it, unchanged, to the
    /// peer's `handle_packet` with `Ingress::Chain { from: <this instance> }`. The tag is not
    /// part of the packet: a driver whose chain path crosses a wire carries what it needs of
    /// it there itself and gives the peer's instance the tag it rebuilds on arrival.
    Chain {
        /// The peer.
        to: InstanceId,
        /// The packet.
        pkt: Vec<u8>,
        /// The driver's tag.
        meta: M,
    },
    /// A packet this instance dropped (only with `MigrationConfig::report_drops`). Bounded:
    /// the output queue takes at most `max_outputs` drop reports beyond its `max_outputs`
    /// packets to send or chain; a report that finds no room is refused and counted
    /// (`InstanceCounters::drop_reports_refused`; the drop itself is counted as usual).
    Dropped {
        /// The packet as it was when dropped.
        pkt: Vec<u8>,
        /// The driver's tag.
        meta: M,
        /// Why (the NAT counter it was counted under).
        reason: flowshift_nat::DropReason,
    },
}

/// Phases of a migration, as reported in events and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Source: `Prepare` sent; destination: `Prepare` received.
    Prepare,
    /// Freeze-copy source: the idle phase.
    Idle,
    /// Freeze-copy source: iterated freeze-and-copy.
    FreezeCopy,
    /// Pre-copy source: copy rounds while serving.
    Rounds,
    /// Stop-copy source, or pre-copy's final round: the group is halted.
    StopCopy,
    /// Destination: receiving state (any algorithm).
    Transfer,
    /// Source: holds nothing more; waiting for `cutover_done`. Destination: committed or
    /// receiving chained traffic, waiting for the source's `Cutover`.
    AwaitCutover,
    /// Source: chaining stragglers after the switch change. Destination: waiting for `Done`.
    Drain,
    /// Finished successfully.
    Done,
    /// Abandoned.
    Aborted,
}

/// This instance's part in a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Moves the group away.
    Source,
    /// Receives the group.
    Destination,
}

/// What an abort did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortOutcome {
    /// The source owns the group again; the destination is told to drop what it received.
    Reverted,
    /// State has moved: the migration finishes as fast as possible instead.
    CompletingForward,
}

/// Events for the controller and the report. Times are driver time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MigrationEvent {
    /// A destination learned of a migration towards it.
    Incoming {
        /// Migration.
        migration: MigrationId,
        /// The group as numbered on this instance.
        group: u16,
        /// Source instance.
        from: InstanceId,
    },
    /// A phase began.
    Phase {
        /// Migration.
        migration: MigrationId,
        /// This instance's role.
        role: Role,
        /// The new phase.
        phase: Phase,
        /// When.
        at: Instant,
    },
    /// Source: it holds no state of the group any more; redirect the switch, then call
    /// `cutover_done`.
    ReadyForCutover {
        /// Migration.
        migration: MigrationId,
        /// The group (source numbering).
        group: u16,
    },
    /// Finished successfully (source: `Done` acknowledged; destination: held packets released).
    Completed {
        /// Migration.
        migration: MigrationId,
        /// Role.
        role: Role,
    },
    /// Abandoned.
    Aborted {
        /// Migration.
        migration: MigrationId,
        /// Role.
        role: Role,
        /// Why.
        reason: AbortReason,
        /// True if the group is left split between the two instances (see crate docs).
        split: bool,
    },
    /// Source: still in `AwaitCutover` `cutover_timeout` after `ReadyForCutover` (and every
    /// `cutover_timeout` after that): it keeps chaining the group's packets to the
    /// destination, which holds all its state, until `cutover_done`. Carries what a controller
    /// that lost its memory (restart) needs to redirect the switch.
    AwaitingCutover {
        /// Migration.
        migration: MigrationId,
        /// The group's external address.
        external: std::net::Ipv4Addr,
        /// The destination.
        to: InstanceId,
        /// The algorithm.
        algorithm: Algorithm,
    },
    /// Pre-copy: a round was acknowledged.
    PrecopyRound {
        /// Migration.
        migration: MigrationId,
        /// Round number (0: the full copy).
        round: u32,
        /// Mappings sent in the round.
        copied: u32,
        /// Of those, dirty ones (copied before, touched since).
        dirty: u32,
        /// Of those, new ones.
        new: u32,
        /// Mappings copied before that died (deleted on the destination).
        dead: u32,
        /// True for the final, halted round.
        last: bool,
    },
    /// Freeze-copy idle phase: one sample.
    IdleProgress {
        /// Migration.
        migration: MigrationId,
        /// Mappings the source still holds.
        remaining: u32,
        /// Mappings that died since the migration began.
        expired: u32,
    },
}

/// Errors of the command API (never of the packet path).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Configuration or parameters refused.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// NAT refused an operation.
    #[error(transparent)]
    Nat(#[from] NatError),
    /// No such group on this instance.
    #[error("no group {0:?}")]
    NoGroup(GroupId),
    /// No group with this external address on this instance.
    #[error("no group {0} (external address) on this instance")]
    NoGroupAt(std::net::Ipv4Addr),
    /// The group is already migrating (in either direction) or split.
    #[error("group {0:?} is already migrating")]
    GroupBusy(GroupId),
    /// Destination is this instance.
    #[error("cannot migrate to self")]
    SelfTarget,
    /// Too many migrations at once.
    #[error("too many migrations in progress")]
    TooMany,
    /// Unknown (or forgotten) migration.
    #[error("unknown migration {0:?}")]
    UnknownMigration(MigrationId),
    /// The command does not apply in the migration's current phase or role.
    #[error("migration is in phase {0:?}")]
    WrongPhase(Phase),
}
