//! Counters and the per-migration report.

use crate::channel::ChannelStats;
use crate::instance::Mig;
use crate::{AbortReason, Algorithm, InstanceId, MigrationId, Role};
use core::time::Duration;
use flowshift_nat::DropReason;
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

macro_rules! loss_causes {
    ($( $(#[doc = $doc:literal])* $name:ident = $label:literal, )*) => {
        /// Why the migration engine (or the NAT, because of a migration) dropped a packet.
        /// Serialized by its label.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[repr(u8)]
        pub enum LossCause { $( $(#[doc = $doc])* $name, )* }

        impl LossCause {
            /// Every cause, in counter order.
            pub const ALL: &'static [LossCause] = &[$(LossCause::$name,)*];
            /// Number of causes.
            pub const COUNT: usize = LossCause::ALL.len();
            /// Stable snake_case name (JSON keys).
            pub const fn label(self) -> &'static str {
                match self { $(LossCause::$name => $label,)* }
            }
        }
    };
}

loss_causes! {
    /// Stop-and-copy downtime: the NAT dropped a packet of the halted group (NAT reason
    /// `GroupHalted`).
    GroupHalted = "group_halted",
    /// A hairpinned packet into a draining group, or a packet to chain with no peer (NAT
    /// reason `GroupDraining`).
    GroupDraining = "group_draining",
    /// The source's buffer for frozen mappings' packets was full (NAT reason
    /// `FreezeBufferFull`).
    FreezeBufferFull = "freeze_buffer_full",
    /// The source's buffer for new flows awaiting `PrepareAck` was full (NAT reason
    /// `PrepareBufferFull`; the space is shared with the freeze buffer).
    PrepareBufferFull = "prepare_buffer_full",
    /// The output queue was full when a packet was to be chained (NAT reason
    /// `ChainQueueFull`).
    ChainQueueFull = "chain_queue_full",
    /// The destination's queue of switch packets held until the end-of-chain marker was full
    /// (NAT reason `CutoverHoldFull`).
    CutoverHoldFull = "cutover_hold_full",
}

impl LossCause {
    /// The NAT drop reason each cause is counted under (by the NAT, over the instance's life).
    pub const fn drop_reason(self) -> DropReason {
        match self {
            LossCause::GroupHalted => DropReason::GroupHalted,
            LossCause::GroupDraining => DropReason::GroupDraining,
            LossCause::FreezeBufferFull => DropReason::FreezeBufferFull,
            LossCause::PrepareBufferFull => DropReason::PrepareBufferFull,
            LossCause::ChainQueueFull => DropReason::ChainQueueFull,
            LossCause::CutoverHoldFull => DropReason::CutoverHoldFull,
        }
    }
}

/// Instance-wide counters of the migration engine (per-migration figures are in reports).
/// Missing fields deserialize as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceCounters {
    /// Transfer frames handed to `handle_transfer`.
    pub frames_in: u64,
    /// Frames that did not decode (dropped).
    pub frames_malformed: u64,
    /// Frames for an unknown migration, from the wrong peer, or arriving before their
    /// `Prepare` (dropped).
    pub frames_unknown: u64,
    /// Acknowledgements sent for frames of forgotten migrations.
    pub stale_acks: u64,
    /// Such acknowledgements refused because their queue was full.
    pub stale_acks_dropped: u64,
    /// Outputs refused because the output queue was full (translated packets lost; chained ones
    /// are also counted as `ChainQueueFull`).
    pub outputs_dropped: u64,
    /// Drop reports (`Output::Dropped`) refused because `max_outputs` of them were waiting
    /// (the drops themselves are counted under their NAT reason).
    pub drop_reports_refused: u64,
    /// Events refused because the event queue was full.
    pub events_dropped: u64,
    /// Packets chained to peers.
    pub chained_out: u64,
    /// Packets received chained from peers.
    pub chained_in: u64,
    /// Buffered packets the engine processed again after a revert or a hold release.
    pub reprocessed: u64,
    /// Destination holds released by `cutover_hold_max` rather than by the end-of-chain marker.
    pub hold_timeouts: u64,
    /// Chained packets an end-of-chain marker counted that never arrived (lost on the chain
    /// path; the hold was released after `chain_idle_release` without them).
    pub chain_lost: u64,
    /// Inconsistencies that should not happen (a `Hold` for a mapping no migration froze, a
    /// mapping that could not be removed, ...); non-zero means a bug.
    pub internal_errors: u64,
    /// Frames refused as stale or replayed: for a migration accepted earlier and forgotten
    /// since (dropped; frames other than `Prepare` are also acknowledged, see `stale_acks`).
    pub frames_stale: u64,
    /// Frames carrying a message for a migration that has already finished here (acknowledged
    /// by the channel, otherwise ignored).
    pub frames_finished: u64,
    /// Accepted migration ids forgotten to keep the replay table within its bound.
    pub replay_forgotten: u64,
    /// Destination: incoming migrations ended because their source came back with a new epoch.
    pub sources_restarted: u64,
    /// Destination: incoming migrations ended because the source fell silent (`peer_timeout`)
    /// or the channel failed.
    pub peer_failures: u64,
    /// Source: migrations reverted because the destination never answered `Prepare`.
    pub prepare_timeouts: u64,
    /// Source: `AwaitingCutover` reports (no `cutover_done` within `cutover_timeout`).
    pub cutover_overdue: u64,
    /// Reserved port blocks returned to the pool when an incoming migration ended without
    /// `Done` and nothing of the source can hold them any more.
    pub reservations_released: u64,
    /// Groups taken over by `adopt_group`.
    pub groups_adopted: u64,
    /// Groups removed by `release_group`, and the mappings dropped with them.
    pub groups_released: u64,
    /// Mappings dropped by `release_group`.
    pub mappings_released: u64,
}

/// One phase of a migration: name, start and end in milliseconds of driver time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseSpan {
    /// Phase name.
    pub name: crate::Phase,
    /// Start (ms).
    pub start_ms: f64,
    /// End (ms); `None` while it lasts.
    pub end_ms: Option<f64>,
}

/// One pre-copy round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RoundReport {
    /// Round number (0: the full copy).
    pub round: u32,
    /// Mappings sent.
    pub copied: u32,
    /// Of those, dirty.
    pub dirty: u32,
    /// Of those, new.
    pub new: u32,
    /// Mappings deleted on the destination (died since copied).
    pub dead: u32,
    /// Records (sessions) sent.
    pub records: u32,
    /// The final, halted round.
    pub last: bool,
}

/// Everything worth reporting about one migration, from this instance's side (the source's
/// report has the algorithm's figures; the destination's its receiving side).
#[derive(Clone, Debug, Serialize)]
pub struct MigrationReport {
    /// Migration.
    pub migration: MigrationId,
    /// This instance's role.
    pub role: Role,
    /// The peer.
    pub peer: InstanceId,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// External address of the group.
    pub external: std::net::Ipv4Addr,
    /// Phases in order.
    pub phases: Vec<PhaseSpan>,
    /// Finished successfully.
    pub completed: bool,
    /// Abandoned, and why.
    pub aborted: Option<AbortReason>,
    /// The group was left split between the instances.
    pub split: bool,
    /// `abort` was called and the migration completed forward.
    pub forced_forward: bool,
    /// Source: mappings at the start of the migration.
    pub mappings_at_start: u32,
    /// Source (freeze-copy): mappings that expired on the source during prepare and idle.
    pub states_expired_idle: u32,
    /// Mappings moved (source: removed after acknowledgement or commit; destination:
    /// installed).
    pub states_transferred: u32,
    /// Records (sessions) sent or received in batches, retransmissions excluded.
    pub records: u64,
    /// Batches sent or received.
    pub batches: u32,
    /// Batches refused by the destination.
    pub batches_refused: u32,
    /// Protocol bytes this side sent (headers, retransmissions and acks included).
    pub bytes_transferred: u64,
    /// Protocol bytes this side received.
    pub bytes_received: u64,
    /// Channel counters.
    pub channel: ChannelStats,
    /// Source: packets buffered (frozen mappings and new flows during prepare); destination:
    /// switch packets held until the end-of-chain marker.
    pub packets_buffered: u64,
    /// Source: packets chained to the destination for this migration.
    pub packets_chained: u64,
    /// Packets lost because of the migration, by cause.
    pub packets_lost_by_cause: BTreeMap<&'static str, u64>,
    /// Longest time any mapping stayed frozen (freeze-copy: freeze to acknowledgement) or the
    /// group stayed halted (stop-copy, pre-copy's final round), in ms.
    pub max_freeze_ms: f64,
    /// Longest time a buffered packet waited (source: in the freeze buffer; destination: in
    /// the hold queue), in ms.
    pub max_buffer_delay_ms: f64,
    /// Stop-copy and pre-copy: how long the group was halted (the downtime), in ms.
    pub halted_ms: f64,
    /// Pre-copy rounds.
    pub precopy_rounds: Vec<RoundReport>,
    /// Mappings whose fate is uncertain after a channel failure (see crate docs).
    pub in_doubt_mappings: u32,
    /// Freeze-copy: port blocks whose records exceeded a frame and were split across batches
    /// (port exclusivity is then not guaranteed for that block; 0 with sane configurations).
    pub blocks_split: u32,
    /// Source, freeze-copy: the longest a packet of a frozen mapping waited in the freeze
    /// buffer before it went on to the destination, in ms: the freeze a subscriber's packets
    /// actually saw (`max_freeze_ms` is the batches' freeze-to-acknowledgement time, seen by a
    /// packet only if it arrives right at the freeze).
    pub max_held_delay_ms: f64,
    /// Source, freeze-copy: mean wait of the held packets, in ms.
    pub mean_held_delay_ms: f64,
    /// Source, freeze-copy: held packets released to the destination.
    pub held_packets_released: u64,
    /// Source, freeze-copy: the freeze budget after the last batch (record bytes in flight).
    pub freeze_budget_bytes: u64,
    /// Source, freeze-copy: each acknowledged batch (the first few thousand), times on the
    /// instance's clock.
    pub freeze_batches: Vec<BatchSpan>,
    /// Source: time from the cutover to the end-of-chain marker, in ms.
    pub chain_end_after_ms: f64,
    /// Source: packets chained after the end-of-chain marker (stragglers the destination may
    /// have processed after newer packets; 0 when the switch's barrier was honest).
    pub chained_after_marker: u64,
}

/// One freeze-and-copy batch, from freeze to acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BatchSpan {
    /// Frozen and sent, ms on the instance's clock.
    pub start_ms: f64,
    /// Acknowledged, ms.
    pub end_ms: f64,
    /// Mappings in the batch.
    pub mappings: u32,
    /// Record bytes.
    pub bytes: u64,
    /// Packets held while it was frozen.
    pub held_packets: u32,
}

/// Per-migration figures (see [`MigrationReport`]).
#[derive(Default)]
pub(crate) struct Stats {
    pub mappings_at_start: u32,
    pub expired_idle: u32,
    pub transferred: u32,
    pub records: u64,
    pub batches: u32,
    pub batches_refused: u32,
    pub buffered: u64,
    pub chained: u64,
    pub lost: [u64; LossCause::COUNT],
    pub max_freeze: Duration,
    pub max_buffer_delay: Duration,
    pub halted: Duration,
    pub rounds: Vec<crate::RoundReport>,
    pub in_doubt: u32,
    pub blocks_split: u32,
    /// Freeze-copy: held packets released, their summed and longest wait (the freeze the
    /// subscriber's packets saw).
    pub held_released: u64,
    pub held_delay_sum: Duration,
    pub max_held_delay: Duration,
    /// The freeze budget after the last acknowledged batch (record bytes).
    pub freeze_budget: u64,
    /// Freeze-copy batches, first `MAX_BATCH_SPANS` of them; the rest are only counted.
    pub batch_spans: Vec<BatchSpan>,
    /// Source: time from the cutover to the end-of-chain marker, and packets chained after it.
    pub chain_end_after: Duration,
    pub chained_after_marker: u64,
}

/// Most freeze batches listed in a report.
pub(crate) const MAX_BATCH_SPANS: usize = 4096;

impl Stats {
    /// Records an acknowledged freeze batch (`held`: packets held while it was frozen).
    pub fn note_batch(
        &mut self,
        sent: Instant,
        acked: Instant,
        mappings: usize,
        bytes: u64,
        held: usize,
    ) {
        if self.batch_spans.len() < MAX_BATCH_SPANS {
            let ms = |t: Instant| t.as_nanos() as f64 / 1e6;
            self.batch_spans.push(BatchSpan {
                start_ms: ms(sent),
                end_ms: ms(acked),
                mappings: mappings as u32,
                bytes,
                held_packets: held as u32,
            });
        }
    }

    /// Records the wait of one held packet released to the destination.
    pub fn note_held(&mut self, waited: Duration) {
        self.held_released += 1;
        self.held_delay_sum += waited;
        self.max_held_delay = self.max_held_delay.max(waited);
    }
}

impl<M: Copy> Mig<M> {
    /// This migration's report.
    pub(crate) fn report(&self) -> MigrationReport {
        let ms = |t: Instant| t.as_nanos() as f64 / 1e6;
        let phases = self
            .phases
            .iter()
            .enumerate()
            .map(|(i, &(name, start))| PhaseSpan {
                name,
                start_ms: ms(start),
                end_ms: self.phases.get(i + 1).map(|&(_, t)| ms(t)).or(
                    if self.terminal && i + 1 == self.phases.len() {
                        Some(ms(start))
                    } else {
                        None
                    },
                ),
            })
            .collect();
        let d = |d: Duration| d.as_nanos() as f64 / 1e6;
        MigrationReport {
            migration: self.id,
            role: self.role(),
            peer: self.peer,
            algorithm: self.algorithm,
            external: self
                .gcfg
                .as_ref()
                .map_or(std::net::Ipv4Addr::UNSPECIFIED, |g| g.external),
            phases,
            completed: self.completed,
            aborted: self.aborted,
            split: self.split,
            forced_forward: self.forced_forward,
            mappings_at_start: self.st.mappings_at_start,
            states_expired_idle: self.st.expired_idle,
            states_transferred: self.st.transferred,
            records: self.st.records,
            batches: self.st.batches,
            batches_refused: self.st.batches_refused,
            bytes_transferred: self.chan.stats.bytes_sent,
            bytes_received: self.chan.stats.bytes_received,
            channel: self.chan.stats,
            packets_buffered: self.st.buffered,
            packets_chained: self.st.chained,
            packets_lost_by_cause: LossCause::ALL
                .iter()
                .map(|c| (c.label(), self.st.lost[*c as usize]))
                .collect(),
            max_freeze_ms: d(self.st.max_freeze),
            max_buffer_delay_ms: d(self.st.max_buffer_delay),
            halted_ms: d(self.st.halted),
            precopy_rounds: self.st.rounds.clone(),
            in_doubt_mappings: self.st.in_doubt,
            blocks_split: self.st.blocks_split,
            max_held_delay_ms: d(self.st.max_held_delay),
            mean_held_delay_ms: if self.st.held_released == 0 {
                0.0
            } else {
                d(self.st.held_delay_sum) / self.st.held_released as f64
            },
            held_packets_released: self.st.held_released,
            freeze_budget_bytes: self.st.freeze_budget,
            freeze_batches: self.st.batch_spans.clone(),
            chain_end_after_ms: d(self.st.chain_end_after),
            chained_after_marker: self.st.chained_after_marker,
        }
    }
}
