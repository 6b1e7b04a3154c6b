//! The source side of a migration: it drives every algorithm.
//!
//! This module holds the source's state ([`Src`]), starting a migration and the packet-path
//! hooks; the answers to the destination's messages are in `messages`, the timers in
//! `timers`, abort and failure in `abort`, batches in `batch` and scans in `scan`.

use crate::config::Params;
use crate::instance::{Core, FrozenFor, GroupMatch, Held, Mig, Route, Side};
use crate::proto::{self, Algorithm, MappingKey, Message};
use crate::report::Stats;
use crate::report::{LossCause, RoundReport};
use crate::{Error, InstanceId, MigrationId, Phase};
use flowshift_nat::{GroupId, GroupMode, MappingId};
use flowshift_wire::Instant;
use std::collections::{BTreeMap, HashMap, VecDeque};

mod abort;
mod batch;
mod messages;
mod scan;
mod timers;
use scan::{Scan, ScanGoal};

/// A batch sent and not yet acknowledged.
pub(crate) struct Flight<M> {
    /// (run key, mapping).
    ids: Vec<(u32, MappingId)>,
    sent_at: Instant,
    /// Record bytes of the batch.
    bytes: u64,
    /// Freeze-copy: packets of these mappings held meanwhile, in arrival order.
    held: Vec<Held<M>>,
}

/// Mappings examined per call while scanning a group (freeze order, pre-copy rounds): the scan
/// goes on in `handle_timeout` calls, between the driver's packet batches, so a large group
/// never keeps the packet thread away for long.
pub(crate) const SCAN_SLICE: usize = 4096;
/// Record bytes a source exports per call at most (about 2,700 records, one testbed batch): a
/// window of several batches fills over several calls. A single batch may exceed it (a port
/// block's run travels whole).
pub(crate) const PUMP_SLICE_BYTES: usize = 64 << 10;
/// At most this many sessions' worth of mappings per scan call (about 0.5 ms at 1M states).
pub(crate) const SCAN_SLICE_SESSIONS: u32 = 8192;
/// Sessions a source removes per call once the destination holds them (freeze-copy's
/// acknowledged batches, stop-copy's and pre-copy's copies after the commit): the removal goes
/// on in `handle_timeout` calls, between packet batches (a mapping's sessions go together).
/// About 0.2 ms at 200 ns a session (two random index lines each, 1M states).
pub(crate) const REMOVE_SLICE_SESSIONS: u32 = 1024;

/// Stop-copy / pre-copy: the removal of the copies after the commit.
#[derive(Clone, Copy, Debug)]
struct Removal {
    /// Copies the commit covered.
    copies: u32,
    /// Mappings removed so far.
    removed: u32,
}

/// What pre-copy remembers of a copied mapping.
struct Copied {
    key: MappingKey,
    at: Instant,
    sessions: u32,
    round: u32,
}

pub(crate) struct Src<M> {
    held_at_prepare: Vec<u32>,
    /// Freeze-copy: packets needing a new mapping while waiting for `PrepareAck`.
    prep_buf: Vec<Held<M>>,
    /// Packets and bytes in `prep_buf` and the flights' `held` together (bounded by
    /// `freeze_buffer_packets` / `freeze_buffer_bytes`).
    buf_pkts: u32,
    buf_bytes: u64,
    flights: BTreeMap<u32, Flight<M>>,
    next_batch: u32,
    /// Mappings still to send in the current round (or freeze order), with their run key
    /// (port block for freeze-copy, unique otherwise).
    queue: VecDeque<(u32, MappingId)>,
    /// A scan in progress: no batch is built until it ends.
    scan: Option<Box<Scan>>,
    /// Stop-copy / pre-copy after `CommitAck`: the group's copies are being removed here (the
    /// group is `Moved` meanwhile: every packet goes to the destination).
    removing: Option<Removal>,
    /// Freeze-copy: acknowledged mappings still to remove here (frozen as
    /// [`FrozenFor::Moved`] meanwhile), oldest batch first.
    retiring: VecDeque<MappingId>,
    // Idle phase.
    idle_started: Instant,
    next_sample: Instant,
    last_count: u32,
    window: VecDeque<(u32, u32)>,
    /// Freeze-copy: a refused batch's mappings wait until then.
    retry_at: Option<Instant>,
    /// The next call sends (`src_pump`): a scan built the freeze order, or the last call
    /// exported its slice with room left in the window.
    pump_due: bool,
    refusals: u32,
    acked_any: bool,
    chained: u64,
    /// Freeze-copy: record bytes the source may have frozen and in flight at once (adapted to
    /// `Params::freeze_target`), and the bytes in flight now.
    budget: u64,
    inflight_bytes: u64,
    // Stop-copy / pre-copy.
    copied: HashMap<MappingId, Copied>,
    round: Option<RoundReport>,
    rounds_started: u32,
    round_started: Instant,
    next_round: Option<(Instant, bool)>,
    halted_at: Option<Instant>,
    commit_sent: bool,
    forward: bool,
    drain_until: Instant,
    /// Drain: when the cutover came, the last time a packet of the group was chained, and
    /// whether the end-of-chain marker has gone out.
    cutover_at: Instant,
    last_chained_at: Instant,
    chain_end_sent: bool,
    done_sent: bool,
    /// When `Prepare` was sent (the `prepare_timeout` runs from it).
    prepared_at: Instant,
    /// In `AwaitCutover`: when the next `AwaitingCutover` report is due.
    overdue_at: Instant,
}

impl<M> Default for Src<M> {
    fn default() -> Self {
        Src {
            held_at_prepare: Vec::new(),
            prep_buf: Vec::new(),
            buf_pkts: 0,
            buf_bytes: 0,
            flights: BTreeMap::new(),
            next_batch: 0,
            queue: VecDeque::new(),
            scan: None,
            removing: None,
            retiring: VecDeque::new(),
            idle_started: Instant::ZERO,
            next_sample: Instant::ZERO,
            last_count: 0,
            window: VecDeque::new(),
            retry_at: None,
            pump_due: false,
            refusals: 0,
            acked_any: false,
            chained: 0,
            budget: 0,
            inflight_bytes: 0,
            copied: HashMap::new(),
            round: None,
            rounds_started: 0,
            round_started: Instant::ZERO,
            next_round: None,
            halted_at: None,
            commit_sent: false,
            forward: false,
            drain_until: Instant::ZERO,
            cutover_at: Instant::ZERO,
            last_chained_at: Instant::ZERO,
            chain_end_sent: false,
            done_sent: false,
            prepared_at: Instant::ZERO,
            overdue_at: Instant::MAX,
        }
    }
}

impl<M> Src<M> {
    /// Every packet buffered here: the prepare buffer, then each flight's held packets.
    pub(crate) fn held(&self) -> impl Iterator<Item = &Held<M>> {
        self.prep_buf
            .iter()
            .chain(self.flights.values().flat_map(|f| f.held.iter()))
    }

    /// The buffer accounting matches the buffers (debug builds; walks the buffers).
    fn check_buffers(&self) {
        if cfg!(debug_assertions) {
            let (n, bytes) = self
                .held()
                .fold((0u32, 0u64), |(n, b), h| (n + 1, b + h.pkt.len() as u64));
            debug_assert_eq!(
                (n, bytes),
                (self.buf_pkts, self.buf_bytes),
                "buffer accounting"
            );
            let inflight: u64 = self.flights.values().map(|f| f.bytes).sum();
            debug_assert_eq!(inflight, self.inflight_bytes, "bytes in flight");
        }
    }
}

impl<M: Copy> Mig<M> {
    fn src(&mut self) -> &mut Src<M> {
        match &mut self.side {
            Side::Src(s) => s,
            Side::Dst(_) => unreachable!("source method on a destination"),
        }
    }

    fn src_ref(&self) -> &Src<M> {
        match &self.side {
            Side::Src(s) => s,
            Side::Dst(_) => unreachable!("source method on a destination"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_source(
        core: &mut Core<M>,
        now: Instant,
        id: MigrationId,
        group: GroupId,
        to: InstanceId,
        algorithm: Algorithm,
        params: Params,
    ) -> Result<Mig<M>, Error> {
        let gcfg = core.nat.group_config(group)?.clone();
        let held = core.nat.held_blocks(group)?;
        let stats = core.nat.group_stats(group)?;
        if algorithm == Algorithm::FreezeCopy {
            // Draining now, so the block set sent in Prepare is final (no mapping is created
            // here afterwards) and the destination's allocations can never collide with ours.
            core.nat.set_group_mode(group, GroupMode::Draining)?;
            core.routes.push(Route {
                group,
                peer: to,
                mig: id,
                buffering: true,
            });
        }
        let nc = core.nat.config();
        let prepare = proto::Prepare {
            external: gcfg.external.octets(),
            prefix_addr: gcfg.subscribers.network().octets(),
            prefix_len: gcfg.subscribers.prefix_len(),
            algorithm,
            held_blocks: held
                .iter()
                .map(|b| (b.block, b.subscriber.octets()))
                .collect(),
            port_min: nc.port_min,
            port_max: nc.port_max,
            block_size: nc.block_size,
            mappings_hint: stats.mappings,
            records_hint: stats.sessions,
        };
        let src = Src {
            prepared_at: now,
            held_at_prepare: held.iter().map(|b| b.block).collect(),
            budget: params.freeze_budget_min as u64,
            ..Src::default()
        };
        let mut m = Mig {
            group,
            gm: GroupMatch::new(&gcfg),
            gcfg: Some(gcfg),
            params,
            st: Stats {
                mappings_at_start: stats.mappings,
                ..Stats::default()
            },
            ..Mig::new(id, to, now, algorithm, Side::Src(Box::new(src)))
        };
        m.chan.send(now, &Message::Prepare(prepare), &core.cfg);
        m.set_phase(core, now, Phase::Prepare);
        Ok(m)
    }

    // ------------------------------------------------------------------ packet-path hooks

    fn buffer_room(&mut self, core: &Core<M>, len: usize) -> bool {
        let cfg = &core.cfg;
        let s = self.src();
        if s.buf_pkts >= cfg.freeze_buffer_packets
            || s.buf_bytes + len as u64 > cfg.freeze_buffer_bytes as u64
        {
            return false;
        }
        s.buf_pkts += 1;
        s.buf_bytes += len as u64;
        true
    }

    fn buffer_free(&mut self, len: usize) {
        let s = self.src();
        debug_assert!(
            s.buf_pkts > 0 && s.buf_bytes >= len as u64,
            "freeing a packet the buffer accounting does not hold"
        );
        s.buf_pkts = s.buf_pkts.saturating_sub(1);
        s.buf_bytes = s.buf_bytes.saturating_sub(len as u64);
    }

    /// Freeze-copy before `PrepareAck`: a packet that needs a new mapping waits.
    pub(crate) fn src_prepare_buffer(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        pkt: Vec<u8>,
        meta: M,
    ) {
        if self.terminal || !self.buffer_room(core, pkt.len()) {
            self.lose(core, LossCause::PrepareBufferFull, pkt, meta);
            return;
        }
        self.st.buffered += 1;
        let s = self.src();
        debug_assert!(s.flights.is_empty(), "no batch before PrepareAck");
        s.prep_buf.push(Held { at: now, pkt, meta });
    }

    /// A packet of a frozen mapping: in a batch in flight, it waits for the batch's
    /// acknowledgement; moved (acknowledged, not yet removed here), it goes to the
    /// destination now, as it would once the mapping is removed.
    pub(crate) fn src_hold(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        why: FrozenFor,
        pkt: Vec<u8>,
        meta: M,
    ) {
        let batch = match why {
            FrozenFor::Batch(b) => b,
            FrozenFor::Moved => {
                let ok = core.chain(self.peer, pkt, meta);
                self.src_note_chained(now, ok);
                return;
            }
        };
        let known = matches!(&self.side, Side::Src(s) if s.flights.contains_key(&batch));
        if !known {
            core.counters.internal_errors += 1;
            self.lose(core, LossCause::FreezeBufferFull, pkt, meta);
            return;
        }
        if !self.buffer_room(core, pkt.len()) {
            self.lose(core, LossCause::FreezeBufferFull, pkt, meta);
            return;
        }
        self.st.buffered += 1;
        if let Some(f) = self.src().flights.get_mut(&batch) {
            f.held.push(Held { at: now, pkt, meta });
        }
    }

    pub(crate) fn src_note_chained(&mut self, now: Instant, ok: bool) {
        if ok {
            self.st.chained += 1;
            if let Side::Src(s) = &mut self.side {
                s.chained += 1;
                s.last_chained_at = now;
                if s.chain_end_sent {
                    self.st.chained_after_marker += 1;
                }
            }
        } else {
            self.st.lost[LossCause::ChainQueueFull as usize] += 1;
        }
    }

    /// Chains a buffered packet to the peer, tracking its wait.
    fn release_to_peer(&mut self, core: &mut Core<M>, now: Instant, h: Held<M>) {
        self.buffer_free(h.pkt.len());
        self.st.max_buffer_delay = self.st.max_buffer_delay.max(now - h.at);
        let ok = core.chain(self.peer, h.pkt, h.meta);
        self.src_note_chained(now, ok);
    }
}

impl<M> Src<M> {
    /// Round numbers count the scans: 0 for the first.
    fn next_round_number(&mut self) -> u32 {
        let n = self.rounds_started;
        self.rounds_started += 1;
        n
    }
}
