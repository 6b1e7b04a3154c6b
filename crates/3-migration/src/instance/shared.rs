//! What all migrations of an instance share: the [`Core`] (the NAT, queues, counters,
//! routes), matching a group's packets ([`GroupMatch`]), chaining routes ([`Route`]) and held
//! packets ([`Held`]).

use crate::config::MigrationConfig;
use crate::report::{InstanceCounters, LossCause};
use crate::{Direction, InstanceId, MigrationEvent, MigrationId, Output};
use flowshift_nat::{DropReason, GroupConfig, GroupId, MappingId, Nat};
use flowshift_wire::Instant;
use flowshift_wire::packet::{field, get_addr};
use std::collections::{HashMap, VecDeque};
/// Matches the packets of one group by address: destination = the external address (inbound),
/// or source inside the subscriber prefix (outbound).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupMatch {
    ext: u32,
    net: u32,
    mask: u32,
}

impl GroupMatch {
    pub const NONE: GroupMatch = GroupMatch {
        ext: 0,
        net: 1,
        mask: 0,
    };

    pub fn new(cfg: &GroupConfig) -> Self {
        let len = cfg.subscribers.prefix_len();
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        GroupMatch {
            ext: u32::from(cfg.external),
            net: u32::from(cfg.subscribers.network()) & mask,
            mask,
        }
    }

    #[inline]
    pub fn matches(&self, pkt: &[u8]) -> bool {
        let (Some(src), Some(dst)) = (
            get_addr(pkt, field::IPV4_SRC),
            get_addr(pkt, field::IPV4_DST),
        ) else {
            return false;
        };
        u32::from_be_bytes(dst) == self.ext || u32::from_be_bytes(src) & self.mask == self.net
    }
}

/// A group being chained to a peer (from `Draining` until the source forgets it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    pub group: GroupId,
    pub peer: InstanceId,
    pub mig: MigrationId,
    /// Freeze-copy before `PrepareAck`: misses are buffered, not chained yet.
    pub buffering: bool,
}

/// Why a source keeps a mapping frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrozenFor {
    /// Exported in this batch, not acknowledged yet: its packets are held.
    Batch(u32),
    /// Acknowledged: the destination's now, to be removed here in a later slice; its packets
    /// are chained to the destination meanwhile (after the batch's held ones).
    Moved,
}

/// A data packet an instance keeps for later, with the driver's tag and when it arrived.
pub(crate) struct Held<M> {
    pub at: Instant,
    pub pkt: Vec<u8>,
    pub meta: M,
}

/// State shared by all migrations of an instance.
pub(crate) struct Core<M> {
    pub id: InstanceId,
    pub nat: Nat,
    pub cfg: MigrationConfig,
    pub outputs: VecDeque<Output<M>>,
    /// Drop reports (`Output::Dropped`) in `outputs`.
    pub reports: usize,
    pub events: VecDeque<MigrationEvent>,
    /// Frozen mappings: which migration, and why.
    pub frozen: HashMap<MappingId, (MigrationId, FrozenFor)>,
    pub routes: Vec<Route>,
    pub chain_tx: HashMap<InstanceId, u64>,
    pub chain_rx: HashMap<InstanceId, u64>,
    /// When the last chained packet from each peer arrived.
    pub chain_rx_at: HashMap<InstanceId, Instant>,
    pub counters: InstanceCounters,
    /// Buffered packets to run through the NAT again at the end of the current call.
    pub reprocess: Vec<(Vec<u8>, M)>,
    pub loose: VecDeque<(InstanceId, Vec<u8>)>,
}

impl<M: Copy> Core<M> {
    pub fn event(&mut self, e: MigrationEvent) {
        if self.events.len() >= self.cfg.max_events as usize {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
        debug_assert!(self.events.len() <= self.cfg.max_events as usize);
    }

    /// True if the output queue has room for one more packet to send or chain: at most
    /// `max_outputs` of them (drop reports have their own allowance, see [`discard`]); a
    /// refusal is counted in `outputs_dropped`.
    ///
    /// [`discard`]: Self::discard
    #[inline]
    fn room(&mut self) -> bool {
        debug_assert!(self.reports <= self.outputs.len());
        if self.outputs.len() - self.reports >= self.cfg.max_outputs as usize {
            self.counters.outputs_dropped += 1;
            false
        } else {
            true
        }
    }

    /// Queues a translated packet; a full queue drops it (`OutputQueueFull`).
    #[inline]
    pub fn send(&mut self, pkt: Vec<u8>, meta: M, dir: Direction) {
        if self.room() {
            self.outputs.push_back(Output::Send { pkt, meta, dir });
        } else {
            self.nat.counters_mut().drop(DropReason::OutputQueueFull);
            self.discard(pkt, meta, DropReason::OutputQueueFull);
        }
    }

    /// Hands a dropped packet back to the driver if it asked for them (the drop is already
    /// counted). Drop reports are bounded apart from the packets to send: at most
    /// `max_outputs` of them wait in the queue; one more is refused and counted in
    /// `drop_reports_refused`.
    pub fn discard(&mut self, pkt: Vec<u8>, meta: M, reason: DropReason) {
        if !self.cfg.report_drops {
            return;
        }
        if self.reports >= self.cfg.max_outputs as usize {
            self.counters.drop_reports_refused += 1;
            return;
        }
        self.reports += 1;
        self.outputs
            .push_back(Output::Dropped { pkt, meta, reason });
    }

    /// Queues a packet for the peer; false (counted as a `ChainQueueFull` drop) if the output
    /// queue is full.
    pub fn chain(&mut self, to: InstanceId, pkt: Vec<u8>, meta: M) -> bool {
        if self.room() {
            self.outputs.push_back(Output::Chain { to, pkt, meta });
            *self.chain_tx.entry(to).or_default() += 1;
            self.counters.chained_out += 1;
            true
        } else {
            self.nat.counters_mut().drop(DropReason::ChainQueueFull);
            self.discard(pkt, meta, DropReason::ChainQueueFull);
            false
        }
    }

    /// Next output for the driver.
    #[inline]
    pub fn pop_output(&mut self) -> Option<Output<M>> {
        let o = self.outputs.pop_front()?;
        if let Output::Dropped { .. } = o {
            debug_assert!(self.reports > 0, "a drop report not counted");
            self.reports -= 1;
        }
        Some(o)
    }

    /// Sets a group's mode; the group is ours, so a failure is an internal error (counted).
    pub fn set_mode(&mut self, g: GroupId, mode: flowshift_nat::GroupMode) {
        if self.nat.set_group_mode(g, mode).is_err() {
            self.counters.internal_errors += 1;
        }
    }

    /// Unfreezes a mapping; a stale handle is an internal error (counted).
    pub fn unfreeze(&mut self, id: MappingId) {
        if self.nat.set_frozen(id, false).is_err() {
            self.counters.internal_errors += 1;
        }
    }

    /// Drops a packet for a migration reason: counted under the NAT's reason, and handed
    /// back if the driver asked for dropped packets.
    pub fn nat_drop(&mut self, cause: LossCause, pkt: Vec<u8>, meta: M) {
        let r = cause.drop_reason();
        self.nat.counters_mut().drop(r);
        self.discard(pkt, meta, r);
    }
}
