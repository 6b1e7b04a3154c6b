//! The source side of a migration: it drives every algorithm.

use crate::config::{MigrationConfig, Params, RateMode};
use crate::instance::{Core, GroupMatch, Held, Mig, Route, Side};
use crate::proto::{self, Algorithm, MappingKey, Message};
use crate::report::Stats;
use crate::report::{LossCause, RoundReport};
use crate::{AbortOutcome, AbortReason, Error, InstanceId, MigrationEvent, MigrationId, Phase};
use core::time::Duration;
use flowshift_nat::{GroupId, GroupMode, MappingId, RemoveCause};
use flowshift_wire::Instant;
use std::collections::{BTreeMap, HashMap, VecDeque};

mod batch;
mod scan;
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
/// Copies a stop-copy or pre-copy source removes per call after the commit.
pub(crate) const REMOVE_SLICE: usize = 1024;

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
    /// Stop-copy / pre-copy after `CommitAck`: the copies still to remove here, and how many
    /// are done (the group is `Moved` meanwhile: every packet goes to the destination).
    removing: Option<(Vec<MappingId>, usize)>,
    // Idle phase.
    idle_started: Instant,
    next_sample: Instant,
    last_count: u32,
    window: VecDeque<(u32, u32)>,
    /// Freeze-copy: a refused batch's mappings wait until then.
    retry_at: Option<Instant>,
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
            idle_started: Instant::ZERO,
            next_sample: Instant::ZERO,
            last_count: 0,
            window: VecDeque::new(),
            retry_at: None,
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

    /// A packet of a frozen mapping (in `batch`) waits for the batch's acknowledgement.
    pub(crate) fn src_hold(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        batch: u32,
        pkt: Vec<u8>,
        meta: M,
    ) {
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

    // ----------------------------------------------------------------------- messages

    pub(crate) fn src_msg(&mut self, core: &mut Core<M>, now: Instant, msg: Message) {
        if self.terminal {
            return;
        }
        match msg {
            Message::PrepareAck if self.phase == Phase::Prepare => self.src_prepared(core, now),
            Message::BatchAck(a) => self.src_batch_ack(core, now, a),
            Message::CommitAck(c) if self.src().commit_sent => self.src_commit_ack(core, now, c),
            // The destination refused Prepare: it installed nothing.
            Message::Abort(reason) => self.src_revert(core, now, reason, false),
            Message::Ack | Message::Ping => {}
            _ => core.counters.frames_unknown += 1,
        }
    }

    pub(crate) fn src_after_frame(&mut self, core: &mut Core<M>, now: Instant) {
        if !self.terminal && self.src().done_sent && self.chan.unacked() == 0 {
            self.complete(core, now);
        }
    }

    fn src_prepared(&mut self, core: &mut Core<M>, now: Instant) {
        match self.algorithm {
            Algorithm::FreezeCopy => {
                let g = self.group;
                if let Some(r) = core.routes.iter_mut().find(|r| r.group == g) {
                    r.buffering = false;
                }
                let buf = std::mem::take(&mut self.src().prep_buf);
                for h in buf {
                    self.release_to_peer(core, now, h);
                }
                self.src_ref().check_buffers();
                if self.src().forward || self.params.idle_max.is_zero() {
                    self.src_start_freeze(core, now);
                } else {
                    let count = core.nat.group_stats(g).map_or(0, |s| s.mappings);
                    let interval = self.params.idle_sample_interval;
                    let s = self.src();
                    s.idle_started = now;
                    s.last_count = count;
                    s.next_sample = now + interval;
                    self.set_phase(core, now, Phase::Idle);
                    if count <= self.params.idle_floor {
                        self.src_start_freeze(core, now);
                    }
                }
            }
            Algorithm::StopCopy => self.src_start_round(core, now, true),
            Algorithm::PreCopy => {
                let last = self.src().forward;
                self.src_start_round(core, now, last);
            }
        }
    }

    fn src_batch_ack(&mut self, core: &mut Core<M>, now: Instant, a: proto::BatchAck) {
        let Some(flight) = self.src().flights.remove(&a.batch) else {
            core.counters.frames_unknown += 1;
            return;
        };
        let (id, batch) = (self.id, a.batch);
        debug_assert!(
            self.algorithm != Algorithm::FreezeCopy
                || flight
                    .ids
                    .iter()
                    .all(|(_, m)| core.frozen.get(m) == Some(&(id, batch))),
            "a flight's mappings are frozen for it"
        );
        debug_assert!(self.algorithm == Algorithm::FreezeCopy || flight.held.is_empty());
        let s = self.src();
        debug_assert!(s.inflight_bytes >= flight.bytes, "bytes in flight");
        s.inflight_bytes = s.inflight_bytes.saturating_sub(flight.bytes);
        if self.algorithm != Algorithm::FreezeCopy {
            if !a.ok {
                self.st.batches_refused += 1;
                self.src_revert(core, now, AbortReason::ImportRefused, true);
            } else {
                self.src_pump(core, now);
            }
            return;
        }
        if a.ok {
            let mut moved = 0;
            for (_, id) in &flight.ids {
                core.frozen.remove(id);
                match core.nat.remove_mapping(*id, now, RemoveCause::Migrated) {
                    Ok(_) => moved += 1,
                    Err(_) => core.counters.internal_errors += 1,
                }
            }
            self.st.transferred += moved;
            let freeze = now - flight.sent_at;
            self.st.max_freeze = self.st.max_freeze.max(freeze);
            self.st.note_batch(
                flight.sent_at,
                now,
                flight.ids.len(),
                flight.bytes,
                flight.held.len(),
            );
            let (target, min, max) = (
                self.params.freeze_target,
                self.params.freeze_budget_min as u64,
                self.params.freeze_budget_max as u64,
            );
            let s = self.src();
            s.acked_any = true;
            s.refusals = 0;
            if !target.is_zero() {
                s.budget = next_budget(flight.bytes, freeze, target, min, max);
            }
            self.st.freeze_budget = s.budget;
            for h in flight.held {
                self.st.note_held(now - h.at);
                self.release_to_peer(core, now, h);
            }
        } else {
            self.st.batches_refused += 1;
            for (_, id) in &flight.ids {
                core.frozen.remove(id);
                if core.nat.set_frozen(*id, false).is_err() {
                    core.counters.internal_errors += 1;
                }
            }
            for h in flight.held {
                self.buffer_free(h.pkt.len());
                core.reprocess.push((h.pkt, h.meta));
            }
            let (retry, max) = (
                self.params.idle_sample_interval,
                self.params.max_batch_refusals,
            );
            let s = self.src();
            s.queue.extend(flight.ids);
            s.refusals += 1;
            if s.refusals >= max {
                self.src_give_up(core, now, AbortReason::ImportRefused);
                return;
            }
            s.retry_at = Some(now + retry);
        }
        self.src_ref().check_buffers();
        self.src_pump(core, now);
    }

    fn src_commit_ack(&mut self, core: &mut Core<M>, now: Instant, c: proto::CommitAck) {
        if !c.ok {
            self.src_revert(core, now, AbortReason::CommitRefused, true);
            return;
        }
        // The destination serves the group from now on: hand it every packet at once (the
        // downtime ends here), and remove the copies in slices between packet batches.
        let g = self.group;
        core.set_mode(g, GroupMode::Moved);
        core.routes.push(Route {
            group: g,
            peer: self.peer,
            mig: self.id,
            buffering: false,
        });
        self.st.transferred = c.mappings;
        if let Some(t) = self.src().halted_at {
            self.st.halted = now - t;
            self.st.max_freeze = self.st.halted;
        }
        let copied = std::mem::take(&mut self.src().copied);
        let mut keyed: Vec<(MappingKey, MappingId)> =
            copied.iter().map(|(id, c)| (c.key, *id)).collect();
        keyed.sort_unstable_by_key(|(k, _)| *k);
        let ids = keyed.into_iter().map(|(_, id)| id).collect();
        self.src().removing = Some((ids, 0));
        self.src_remove_step(core, now);
    }

    /// Removes the next [`REMOVE_SLICE`] copies; after the last, the source is ready for the
    /// cutover.
    fn src_remove_step(&mut self, core: &mut Core<M>, now: Instant) {
        let Some((ids, mut pos)) = self.src().removing.take() else {
            return;
        };
        debug_assert!(pos < ids.len() || ids.is_empty(), "removal past its end");
        let end = (pos + REMOVE_SLICE).min(ids.len());
        for id in &ids[pos..end] {
            // A mapping that expired here after its last copy is gone already: fine, the
            // destination's copy expires there too.
            let _ = core.nat.remove_mapping(*id, now, RemoveCause::Migrated);
        }
        pos = end;
        if pos < ids.len() {
            self.src().removing = Some((ids, pos));
            return;
        }
        let left = core.nat.group_stats(self.group).map_or(0, |s| s.mappings);
        if left != 0 {
            // Cannot happen: a halted or moved group creates no mapping.
            core.counters.internal_errors += 1;
            self.st.in_doubt = left;
        }
        self.src_ready(core, now);
    }

    fn src_ready(&mut self, core: &mut Core<M>, now: Instant) {
        let t = core.cfg.cutover_timeout;
        self.src().overdue_at = now + t;
        self.set_phase(core, now, Phase::AwaitCutover);
        core.event(MigrationEvent::ReadyForCutover {
            migration: self.id,
            group: self.group.0,
        });
    }

    pub(crate) fn src_cutover(&mut self, core: &mut Core<M>, now: Instant) {
        self.set_phase(core, now, Phase::Drain);
        self.chan.send(now, &Message::Cutover, &core.cfg);
        let d = self.params.drain;
        let s = self.src();
        s.drain_until = now + d;
        s.cutover_at = now;
    }

    /// When the end-of-chain marker is due: `chain_quiet` after the cutover and after the last
    /// chained packet, and no later than the end of the drain.
    fn src_chain_end_due(&self, s: &Src<M>) -> Instant {
        let q = self.params.chain_quiet;
        (s.cutover_at.max(s.last_chained_at) + q).min(s.drain_until)
    }

    /// Sends the end-of-chain marker: every packet of the group chained so far is counted in
    /// it, so the destination can stop holding once that many chained packets have arrived.
    fn src_send_chain_end(&mut self, core: &mut Core<M>, now: Instant) {
        let chained = core.chain_tx.get(&self.peer).copied().unwrap_or(0);
        self.chan.send(
            now,
            &Message::ChainEnd(proto::ChainEnd { chained }),
            &core.cfg,
        );
        self.src().chain_end_sent = true;
        self.st.chain_end_after = now - self.src_ref().cutover_at;
    }

    fn src_drained(&mut self, core: &mut Core<M>, now: Instant) {
        if !self.src_ref().chain_end_sent {
            self.src_send_chain_end(core, now);
        }
        let g = self.group;
        if core.nat.remove_group(g).is_err() {
            core.counters.internal_errors += 1;
            self.abort_final(core, now, AbortReason::Protocol, true);
            return;
        }
        core.routes.retain(|r| r.group != g);
        let chained = core.chain_tx.get(&self.peer).copied().unwrap_or(0);
        let released = self.src().held_at_prepare.clone();
        self.chan.send(
            now,
            &Message::Done(proto::Done {
                released_blocks: released,
                chained,
            }),
            &core.cfg,
        );
        self.src().done_sent = true;
        self.set_phase(core, now, Phase::Done);
        if self.chan.failed {
            // Nobody will acknowledge: the destination times out on its side.
            self.complete(core, now);
        }
    }

    // ------------------------------------------------------------------ freeze-and-copy

    fn src_idle_sample(&mut self, core: &mut Core<M>, now: Instant) {
        let remaining = core.nat.group_stats(self.group).map_or(0, |s| s.mappings);
        let p = self.params.clone();
        let start = self.st.mappings_at_start;
        let s = self.src();
        let deaths = s.last_count.saturating_sub(remaining);
        s.window.push_back((deaths, s.last_count));
        while s.window.len() > p.idle_window_samples as usize {
            s.window.pop_front();
        }
        s.last_count = remaining;
        s.next_sample = now + p.idle_sample_interval;
        let full = s.window.len() == p.idle_window_samples as usize;
        let total: u32 = s.window.iter().map(|w| w.0).sum();
        let base = s.window.front().map_or(0, |w| w.1);
        let secs = p.idle_sample_interval.as_secs_f64() * s.window.len() as f64;
        let abs = if secs > 0.0 { total as f64 / secs } else { 0.0 };
        let rate = match p.idle_rate_mode {
            RateMode::Absolute => abs,
            RateMode::Relative if base > 0 => abs / base as f64,
            RateMode::Relative => 0.0,
        };
        let timed_out = now >= s.idle_started + p.idle_max;
        core.event(MigrationEvent::IdleProgress {
            migration: self.id,
            remaining,
            expired: start.saturating_sub(remaining),
        });
        // Nothing died at all so far: there is nothing to wait for (the rate is zero whatever
        // the window), so freeze-and-copy starts at the first sample.
        let none_dying = total == 0 && p.idle_rate_threshold > 0.0;
        if remaining <= p.idle_floor
            || timed_out
            || ((full || none_dying) && rate < p.idle_rate_threshold)
        {
            self.src_start_freeze(core, now);
        }
    }

    fn src_start_freeze(&mut self, core: &mut Core<M>, now: Instant) {
        let g = self.group;
        let remaining = core.nat.group_stats(g).map_or(0, |s| s.mappings);
        self.st.expired_idle = self.st.mappings_at_start.saturating_sub(remaining);
        self.set_phase(core, now, Phase::FreezeCopy);
        self.src_begin_scan(core, now, ScanGoal::FreezeOrder(BTreeMap::new()));
    }

    // ------------------------------------------------------------------ abort and failure

    fn src_revertible(&self) -> bool {
        let Side::Src(s) = &self.side else {
            return false;
        };
        match self.algorithm {
            Algorithm::FreezeCopy => !s.acked_any && s.chained == 0,
            Algorithm::StopCopy | Algorithm::PreCopy => !s.commit_sent,
        }
    }

    pub(crate) fn src_abort(&mut self, core: &mut Core<M>, now: Instant) -> AbortOutcome {
        if self.src_revertible() {
            self.src_revert(core, now, AbortReason::Requested, true);
            return AbortOutcome::Reverted;
        }
        self.forced_forward = true;
        self.src().forward = true;
        match self.phase {
            Phase::Idle => self.src_start_freeze(core, now),
            // Between rounds: the final one starts now. During a round: it follows that round.
            Phase::Rounds if self.src_ref().next_round.is_some() => {
                self.src_start_round(core, now, true);
            }
            _ => {}
        }
        AbortOutcome::CompletingForward
    }

    /// Gives the group back to the source: unfreeze, resume, re-process every buffered
    /// packet, and (if `notify`) tell the destination to drop what it received.
    fn src_revert(&mut self, core: &mut Core<M>, now: Instant, reason: AbortReason, notify: bool) {
        if !self.src_revertible() {
            self.src_give_up(core, now, reason);
            return;
        }
        let g = self.group;
        let (flights, prep) = {
            let s = self.src();
            s.queue.clear();
            s.scan = None;
            s.copied.clear();
            s.buf_pkts = 0;
            s.buf_bytes = 0;
            s.inflight_bytes = 0;
            (
                std::mem::take(&mut s.flights),
                std::mem::take(&mut s.prep_buf),
            )
        };
        for f in flights.values() {
            for (_, id) in &f.ids {
                core.frozen.remove(id);
                if self.algorithm == Algorithm::FreezeCopy {
                    core.unfreeze(*id);
                }
            }
        }
        let me = self.id;
        debug_assert!(
            !core.frozen.values().any(|(m, _)| *m == me),
            "a reverted migration keeps no frozen mapping"
        );
        core.set_mode(g, GroupMode::Active);
        core.routes.retain(|r| r.group != g);
        core.reprocess
            .extend(prep.into_iter().map(|h| (h.pkt, h.meta)));
        for f in flights.into_values() {
            core.reprocess
                .extend(f.held.into_iter().map(|h| (h.pkt, h.meta)));
        }
        if let Some(t) = self.src().halted_at {
            self.st.halted = now - t;
        }
        if notify {
            self.chan.send(now, &Message::Abort(reason), &core.cfg);
        }
        self.abort_final(core, now, reason, false);
    }

    /// The controller made this instance the group's owner again (the destination died):
    /// keeps what is held here, serves the group (`Active`), chains nothing more.
    pub(crate) fn src_adopt(&mut self, core: &mut Core<M>, now: Instant) {
        let g = self.group;
        if !self.terminal {
            if self.src_revertible() {
                self.src_revert(core, now, AbortReason::Rehomed, false);
            } else {
                self.src_give_up(core, now, AbortReason::Rehomed);
            }
        }
        core.set_mode(g, GroupMode::Active);
        core.routes.retain(|r| r.group != g);
    }

    /// Not revertible and cannot go on: keep what is held here (see the crate docs).
    pub(crate) fn src_give_up(&mut self, core: &mut Core<M>, now: Instant, reason: AbortReason) {
        let g = self.group;
        let flights = std::mem::take(&mut self.src().flights);
        let mut in_doubt = 0;
        for f in flights.into_values() {
            for (_, id) in &f.ids {
                core.frozen.remove(id);
                if self.algorithm == Algorithm::FreezeCopy {
                    core.unfreeze(*id);
                }
            }
            in_doubt += f.ids.len() as u32;
            core.reprocess
                .extend(f.held.into_iter().map(|h| (h.pkt, h.meta)));
        }
        let algorithm = self.algorithm;
        let s = self.src();
        s.scan = None;
        s.buf_pkts = 0;
        s.buf_bytes = 0;
        s.inflight_bytes = 0;
        let split = match algorithm {
            // Keep serving what is left in Draining mode, chaining misses to the peer.
            Algorithm::FreezeCopy => true,
            // Commit sent, answer lost: keep the copies and serve them.
            Algorithm::StopCopy | Algorithm::PreCopy => {
                in_doubt = s.copied.len() as u32;
                s.copied.clear();
                core.set_mode(g, GroupMode::Active);
                core.routes.retain(|r| r.group != g);
                if let Some(t) = s.halted_at {
                    self.st.halted = now - t;
                }
                false
            }
        };
        self.st.in_doubt = in_doubt;
        self.abort_final(core, now, reason, split);
    }

    // --------------------------------------------------------------------------- timers

    pub(crate) fn src_timeout(&mut self, core: &mut Core<M>, now: Instant) {
        self.chan.on_timeout(now, &core.cfg);
        if self.terminal {
            return;
        }
        if self.src_ref().removing.is_some() {
            // Committed: the destination serves the group whatever the channel does now.
            self.src_remove_step(core, now);
            return;
        }
        if self.chan.failed {
            match self.phase {
                // Nothing of the group is left here: finish without the peer.
                Phase::AwaitCutover | Phase::Drain => {}
                Phase::Done => {
                    self.complete(core, now);
                    return;
                }
                _ => {
                    self.src_revert(core, now, AbortReason::ChannelFailed, false);
                    return;
                }
            }
        }
        if self.chan.unacked() == 0 && now >= self.chan.last_sent + core.cfg.keepalive {
            self.chan.send(now, &Message::Ping, &core.cfg);
        }
        if self.src_ref().scan.is_some() {
            self.src_scan_step(core, now);
            return;
        }
        match self.phase {
            Phase::Prepare if now >= self.src_ref().prepared_at + core.cfg.prepare_timeout => {
                // No answer to Prepare (lost, or refused as stale by a confused peer): give
                // the group back; the Abort tells a slow destination to drop what it added.
                core.counters.prepare_timeouts += 1;
                self.src_revert(core, now, AbortReason::PrepareTimeout, true);
            }
            Phase::AwaitCutover if now >= self.src_ref().overdue_at => {
                core.counters.cutover_overdue += 1;
                let t = core.cfg.cutover_timeout;
                self.src().overdue_at = now + t;
                if let Some(g) = &self.gcfg {
                    core.event(MigrationEvent::AwaitingCutover {
                        migration: self.id,
                        external: g.external,
                        to: self.peer,
                        algorithm: self.algorithm,
                    });
                }
            }
            Phase::Idle if now >= self.src_ref().next_sample => self.src_idle_sample(core, now),
            Phase::FreezeCopy if self.src_ref().retry_at.is_some_and(|t| t <= now) => {
                self.src_pump(core, now)
            }
            Phase::Rounds | Phase::StopCopy => {
                if let Some((at, last)) = self.src().next_round
                    && at <= now
                {
                    self.src_start_round(core, now, last);
                }
            }
            Phase::Drain if now >= self.src_ref().drain_until => self.src_drained(core, now),
            Phase::Drain
                if !self.src_ref().chain_end_sent
                    && now >= self.src_chain_end_due(self.src_ref()) =>
            {
                self.src_send_chain_end(core, now)
            }
            _ => {}
        }
    }

    pub(crate) fn src_next_timeout(&self, s: &Src<M>, cfg: &MigrationConfig) -> Instant {
        let mut t = self.chan.next_timeout();
        if self.terminal {
            return t;
        }
        if self.chan.unacked() == 0 && !self.chan.failed {
            t = t.min(self.chan.last_sent + cfg.keepalive);
        }
        let own = match self.phase {
            // A scan or a removal goes on at the next call.
            _ if s.scan.is_some() || s.removing.is_some() => Some(Instant::ZERO),
            Phase::Prepare => Some(s.prepared_at + cfg.prepare_timeout),
            Phase::AwaitCutover => Some(s.overdue_at),
            Phase::Idle => Some(s.next_sample),
            Phase::FreezeCopy => s.retry_at,
            Phase::Rounds | Phase::StopCopy => s.next_round.map(|(at, _)| at),
            Phase::Drain if !s.chain_end_sent => Some(self.src_chain_end_due(s)),
            Phase::Drain => Some(s.drain_until),
            _ => None,
        };
        own.map_or(t, |o| t.min(o))
    }
}

/// The next freeze budget after a batch of `bytes` was acknowledged `freeze` after it was
/// frozen: the batch's size scaled by three quarters of `target` over `freeze` (so at most
/// halved or doubled per batch), within `[min, max]`. With a freeze that is a fixed round trip
/// plus the batch's transfer time, a batch of the new size freezes for at most the three
/// quarters: the round trip does not grow with it.
fn next_budget(bytes: u64, freeze: Duration, target: Duration, min: u64, max: u64) -> u64 {
    debug_assert!(
        min <= max,
        "freeze budget bounds (validated with the parameters)"
    );
    let goal = target.as_nanos() as f64 * 0.75;
    let seen = (freeze.as_nanos() as f64).max(1.0);
    let factor = (goal / seen).clamp(0.5, 2.0);
    ((bytes as f64 * factor) as u64).clamp(min, max)
}

impl<M> Src<M> {
    /// Round numbers count the scans: 0 for the first.
    fn next_round_number(&mut self) -> u32 {
        let n = self.rounds_started;
        self.rounds_started += 1;
        n
    }
}
