//! The destination side of a migration: passive, it reacts to the source's messages.

use crate::config::MigrationConfig;
use crate::instance::{Core, GroupMatch, Held, Mig, Side};
use crate::proto::{self, Algorithm, MappingKey, Message};
use crate::report::LossCause;
use crate::{AbortReason, MigrationEvent, Phase};
use flowshift_nat::record::RECORD_LEN;
use flowshift_nat::{GroupConfig, GroupMode, RemoveCause};
use flowshift_wire::Instant;
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

/// Pre-copy: the staged records of one mapping and when they arrived.
struct Staged {
    at: Instant,
    records: Vec<u8>,
}

/// Records a pre-copy commit imports per call: the rest goes on in `handle_timeout` calls,
/// between the driver's packet batches (the group stays halted until the last one).
pub(crate) const IMPORT_SLICE_RECORDS: usize = 8192;

/// A pre-copy commit being installed slice by slice.
struct CommitJob {
    /// The staged mappings not installed yet.
    staged: BTreeMap<MappingKey, Staged>,
}

pub(crate) struct Dst<M> {
    commit_job: Option<CommitJob>,
    staged: BTreeMap<MappingKey, Staged>,
    staged_records: u64,
    imported_mappings: u32,
    imported_records: u32,
    group_added: bool,
    committed: bool,
    /// Switch packets of the group held until the end-of-chain marker (at most
    /// `cutover_hold_packets` and `cutover_hold_bytes`; `held_bytes` counts them).
    held: VecDeque<Held<M>>,
    held_bytes: u64,
    pub holding: bool,
    /// From `ChainEnd`: chained packets to receive before the holding stops.
    chain_end_target: Option<u64>,
    chain_end_at: Instant,
    /// From `Done`: chained packets to wait for.
    pub done_target: Option<u64>,
    done_at: Instant,
    /// The source's blocks are reserved in our group (from `Prepare` to `Done`, a drop of the
    /// group, or a release when the source is known gone).
    reserved: bool,
}

impl<M> Default for Dst<M> {
    fn default() -> Self {
        Dst {
            commit_job: None,
            staged: BTreeMap::new(),
            staged_records: 0,
            imported_mappings: 0,
            imported_records: 0,
            group_added: false,
            committed: false,
            held: VecDeque::new(),
            held_bytes: 0,
            holding: false,
            chain_end_target: None,
            chain_end_at: Instant::ZERO,
            done_target: None,
            done_at: Instant::ZERO,
            reserved: false,
        }
    }
}

impl<M> Dst<M> {
    /// The switch packets held until the end-of-chain marker, in arrival order.
    pub fn held(&self) -> impl Iterator<Item = &Held<M>> {
        self.held.iter()
    }

    /// Waiting for chained packets: before releasing the hold (`ChainEnd`) or completing
    /// (`Done`).
    pub fn awaits_chain(&self) -> bool {
        self.done_target.is_some() || (self.holding && self.chain_end_target.is_some())
    }
}

fn key_of(rec: &[u8]) -> MappingKey {
    MappingKey {
        proto: rec[0],
        addr: [rec[4], rec[5], rec[6], rec[7]],
        port: u16::from_be_bytes([rec[8], rec[9]]),
    }
}

impl<M: Copy> Mig<M> {
    fn dst(&mut self) -> &mut Dst<M> {
        match &mut self.side {
            Side::Dst(d) => d,
            Side::Src(_) => unreachable!("destination method on a source"),
        }
    }

    pub(crate) fn dst_msg(&mut self, core: &mut Core<M>, now: Instant, msg: Message) {
        if self.terminal {
            return;
        }
        match msg {
            Message::Prepare(p) if !self.dst().group_added => self.dst_prepare(core, now, p),
            Message::Batch { batch, records } if self.dst().group_added => {
                self.dst_batch(core, now, batch, records)
            }
            Message::Delete(keys) => {
                let d = self.dst();
                for k in keys {
                    if let Some(s) = d.staged.remove(&k) {
                        let n = (s.records.len() / RECORD_LEN) as u64;
                        debug_assert!(d.staged_records >= n, "staged record count");
                        d.staged_records -= n;
                    }
                }
            }
            Message::Commit(c) if self.dst().group_added => self.dst_commit(core, now, c),
            Message::Cutover => self.set_phase(core, now, Phase::Drain),
            Message::ChainEnd(c) => {
                let d = self.dst();
                if d.chain_end_target.is_none() {
                    d.chain_end_target = Some(c.chained);
                    d.chain_end_at = now;
                }
                self.dst_try_complete(core, now);
            }
            Message::Done(d) => {
                if core.nat.release_reserved_blocks(self.group).is_err() {
                    core.counters.internal_errors += 1;
                }
                self.dst().reserved = false;
                let dd = self.dst();
                dd.done_target = Some(d.chained);
                dd.done_at = now;
                self.set_phase(core, now, Phase::Drain);
                self.dst_try_complete(core, now);
            }
            Message::Abort(reason) => self.dst_revert(core, now, reason),
            Message::Ping | Message::Ack => {}
            _ => core.counters.frames_unknown += 1,
        }
    }

    fn dst_refuse(&mut self, core: &mut Core<M>, now: Instant, reason: AbortReason) {
        self.chan.send(now, &Message::Abort(reason), &core.cfg);
        self.abort_final(core, now, reason, false);
    }

    fn dst_prepare(&mut self, core: &mut Core<M>, now: Instant, p: proto::Prepare) {
        self.set_phase(core, now, Phase::Prepare);
        let nc = core.nat.config();
        if (p.port_min, p.port_max, p.block_size) != (nc.port_min, nc.port_max, nc.block_size) {
            self.dst_refuse(core, now, AbortReason::ConfigMismatch);
            return;
        }
        let Some(subscribers) = flowshift_nat::prefix(Ipv4Addr::from(p.prefix_addr), p.prefix_len)
        else {
            self.dst_refuse(core, now, AbortReason::Protocol);
            return;
        };
        let gcfg = GroupConfig {
            external: Ipv4Addr::from(p.external),
            subscribers,
        };
        // Freeze-copy serves chained new flows at once; the others install at commit.
        let mode = match p.algorithm {
            Algorithm::FreezeCopy => GroupMode::Active,
            Algorithm::StopCopy | Algorithm::PreCopy => GroupMode::Halted,
        };
        let Ok(g) = core.nat.add_group(gcfg.clone(), mode) else {
            self.dst_refuse(core, now, AbortReason::PrepareRefused);
            return;
        };
        // Sized once for what the source announced (a hint, clamped by the NAT to its bounds),
        // so the batches' imports never grow a table.
        core.nat
            .reserve(p.mappings_hint as usize, p.records_hint as usize);
        let blocks: Vec<u32> = p.held_blocks.iter().map(|b| b.0).collect();
        if core.nat.reserve_blocks(g, &blocks).is_err() {
            let _ = core.nat.remove_group(g);
            self.dst_refuse(core, now, AbortReason::PrepareRefused);
            return;
        }
        self.group = g;
        self.dst().reserved = true;
        self.gm = GroupMatch::new(&gcfg);
        self.gcfg = Some(gcfg);
        self.algorithm = p.algorithm;
        let d = self.dst();
        d.group_added = true;
        d.holding = true;
        self.chan.send(now, &Message::PrepareAck, &core.cfg);
        core.event(MigrationEvent::Incoming {
            migration: self.id,
            group: g.0,
            from: self.peer,
        });
        self.set_phase(core, now, Phase::Transfer);
    }

    fn dst_batch(&mut self, core: &mut Core<M>, now: Instant, batch: u32, records: Vec<u8>) {
        debug_assert_eq!(
            records.len() % RECORD_LEN,
            0,
            "decoded batches hold whole records"
        );
        let n = (records.len() / RECORD_LEN) as u32;
        self.st.batches += 1;
        self.st.records += n as u64;
        let g = self.group;
        let (installed, ok) = match self.algorithm {
            Algorithm::FreezeCopy | Algorithm::StopCopy => {
                match core.nat.import(g, now, &records) {
                    Ok(s) => {
                        let d = self.dst();
                        d.imported_mappings += s.mappings;
                        d.imported_records += s.sessions;
                        if self.algorithm == Algorithm::FreezeCopy {
                            self.st.transferred += s.mappings;
                        }
                        (s.sessions, true)
                    }
                    Err(_) => (0, false),
                }
            }
            Algorithm::PreCopy => {
                let max = core.nat.config().max_sessions as u64;
                let d = self.dst();
                let mut by_key: BTreeMap<MappingKey, Vec<u8>> = BTreeMap::new();
                for rec in records.chunks_exact(RECORD_LEN) {
                    by_key
                        .entry(key_of(rec))
                        .or_default()
                        .extend_from_slice(rec);
                }
                let replaced: u64 = by_key
                    .keys()
                    .filter_map(|k| d.staged.get(k))
                    .map(|s| (s.records.len() / RECORD_LEN) as u64)
                    .sum();
                debug_assert!(replaced <= d.staged_records, "staged record count");
                let total = d.staged_records - replaced + n as u64;
                if total > max {
                    (0, false)
                } else {
                    for (k, recs) in by_key {
                        d.staged.insert(
                            k,
                            Staged {
                                at: now,
                                records: recs,
                            },
                        );
                    }
                    d.staged_records = total;
                    (n, true)
                }
            }
        };
        if !ok {
            self.st.batches_refused += 1;
        }
        self.chan.send(
            now,
            &Message::BatchAck(proto::BatchAck {
                batch,
                installed,
                ok,
            }),
            &core.cfg,
        );
    }

    fn dst_commit(&mut self, core: &mut Core<M>, now: Instant, c: proto::Commit) {
        match self.algorithm {
            Algorithm::StopCopy => {
                let d = self.dst();
                let ok = d.imported_mappings == c.mappings && d.imported_records == c.records;
                self.dst_commit_answer(core, now, ok);
            }
            Algorithm::PreCopy => {
                let d = self.dst();
                if d.commit_job.is_some() {
                    return; // a retransmitted Commit while installing
                }
                if d.staged.len() as u64 != c.mappings as u64
                    || d.staged_records != c.records as u64
                {
                    self.dst_commit_answer(core, now, false);
                    return;
                }
                let staged = std::mem::take(&mut d.staged);
                d.staged_records = 0;
                d.imported_mappings = 0;
                d.imported_records = 0;
                d.commit_job = Some(CommitJob { staged });
                self.dst_commit_step(core, now);
            }
            Algorithm::FreezeCopy => self.dst_commit_answer(core, now, false),
        }
    }

    /// Imports the next slice (whole mappings, about [`IMPORT_SLICE_RECORDS`] records) of a
    /// pre-copy commit; answers the commit after the last one, or at the first refusal (what
    /// was imported goes when the source's `Abort` comes).
    fn dst_commit_step(&mut self, core: &mut Core<M>, now: Instant) {
        let g = self.group;
        let d = self.dst();
        let Some(job) = d.commit_job.as_mut() else {
            return;
        };
        // Records carry their idle time at export; add the time they waited here.
        let mut slice = Vec::with_capacity(IMPORT_SLICE_RECORDS * RECORD_LEN);
        while slice.len() < IMPORT_SLICE_RECORDS * RECORD_LEN {
            let Some((_, st)) = job.staged.pop_first() else {
                break;
            };
            let extra = u32::try_from(now.saturating_since(st.at).as_millis()).unwrap_or(u32::MAX);
            for rec in st.records.chunks_exact(RECORD_LEN) {
                let start = slice.len();
                slice.extend_from_slice(rec);
                let idle = &mut slice[start + 20..start + 24];
                let v =
                    u32::from_be_bytes([idle[0], idle[1], idle[2], idle[3]]).saturating_add(extra);
                idle.copy_from_slice(&v.to_be_bytes());
            }
        }
        let last = job.staged.is_empty();
        debug_assert_eq!(slice.len() % RECORD_LEN, 0, "whole records");
        let ok = slice.is_empty()
            || match core.nat.import(g, now, &slice) {
                Ok(st) => {
                    d.imported_mappings += st.mappings;
                    d.imported_records += st.sessions;
                    true
                }
                Err(_) => false,
            };
        if last || !ok {
            d.commit_job = None;
            self.dst_commit_answer(core, now, ok);
        }
    }

    fn dst_commit_answer(&mut self, core: &mut Core<M>, now: Instant, ok: bool) {
        let g = self.group;
        let d = self.dst();
        let (mappings, records) = (d.imported_mappings, d.imported_records);
        if ok {
            d.committed = true;
            core.set_mode(g, GroupMode::Active);
            self.st.transferred = mappings;
            self.set_phase(core, now, Phase::AwaitCutover);
        }
        self.chan.send(
            now,
            &Message::CommitAck(proto::CommitAck {
                ok,
                mappings,
                records,
            }),
            &core.cfg,
        );
    }

    /// Drops everything received for the migration and the group (the source reverted).
    fn dst_drop_group(&mut self, core: &mut Core<M>, now: Instant) {
        let g = self.group;
        let d = self.dst();
        d.staged.clear();
        d.staged_records = 0;
        d.commit_job = None;
        if !d.group_added {
            return;
        }
        d.group_added = false;
        d.reserved = false;
        for id in core.nat.group_mappings(g).unwrap_or_default() {
            let _ = core.nat.remove_mapping(id, now, RemoveCause::Migrated);
        }
        if core.nat.remove_group(g).is_err() {
            core.counters.internal_errors += 1;
        }
        self.st.transferred = 0;
    }

    pub(crate) fn dst_revert(&mut self, core: &mut Core<M>, now: Instant, reason: AbortReason) {
        self.dst_drop_group(core, now);
        self.dst_release(core, now);
        self.abort_final(core, now, reason, false);
    }

    /// The source is gone (silence, our own retransmissions exhausted, or a restart). Keeps
    /// what the source can no longer take back (freeze-copy state, a commit) and the
    /// reserved blocks (a silent source may still hold their ports; see
    /// [`dst_release_reservations`](Self::dst_release_reservations)).
    pub(crate) fn dst_peer_failed(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        reason: AbortReason,
    ) {
        core.counters.peer_failures += 1;
        let holds = self.dst().group_added
            && core
                .nat
                .group_stats(self.group)
                .is_ok_and(|s| s.mappings > 0);
        // Freeze-copy state and a commit are the only copy; an empty group is nothing to keep.
        let keep = (self.algorithm == Algorithm::FreezeCopy && holds) || self.dst().committed;
        if !keep {
            // The source reverts whatever it did not see committed.
            self.dst_drop_group(core, now);
        } else {
            let d = self.dst();
            d.staged.clear();
            d.staged_records = 0;
        }
        self.dst_release(core, now);
        let split = keep && self.dst().done_target.is_none();
        self.abort_final(core, now, reason, split);
    }

    /// Returns the source's reserved blocks to the pool: its process is gone (restarted) or the
    /// controller gave the group to this instance. Counted in `reservations_released`.
    pub(crate) fn dst_release_reservations(&mut self, core: &mut Core<M>) {
        if !self.dst().reserved {
            return;
        }
        self.dst().reserved = false;
        if core.nat.release_reserved_blocks(self.group).is_ok() {
            core.counters.reservations_released += 1;
        }
    }

    /// The controller's abort of an incoming migration: drops it (the group stays with the
    /// source) only if nothing here can be the only copy of the source's state: no mapping
    /// of the group and no commit. Otherwise the source decides (it reverts, completing with
    /// `Abort`, or completes forward) and this returns `CompletingForward`.
    pub(crate) fn dst_abort(&mut self, core: &mut Core<M>, now: Instant) -> crate::AbortOutcome {
        let g = self.group;
        let mappings = if self.dst().group_added {
            core.nat.group_stats(g).map_or(0, |s| s.mappings)
        } else {
            0
        };
        if mappings > 0 || self.dst().committed {
            return crate::AbortOutcome::CompletingForward;
        }
        self.chan
            .send(now, &Message::Abort(AbortReason::Requested), &core.cfg);
        self.dst_revert(core, now, AbortReason::Requested);
        crate::AbortOutcome::Reverted
    }

    /// The controller made this instance the group's owner (its source died): keeps every
    /// mapping received, releases the hold and the reservations, serves the group (`Active`).
    pub(crate) fn dst_adopt(&mut self, core: &mut Core<M>, now: Instant) {
        let d = self.dst();
        d.staged.clear();
        d.staged_records = 0;
        d.commit_job = None;
        let added = d.group_added;
        self.dst_release(core, now);
        self.dst_release_reservations(core);
        if added {
            core.set_mode(self.group, GroupMode::Active);
        }
        self.abort_final(core, now, AbortReason::Rehomed, false);
    }

    /// The controller gave the group to another instance: drops everything received.
    pub(crate) fn dst_release_group(&mut self, core: &mut Core<M>, now: Instant) {
        self.dst_revert(core, now, AbortReason::Rehomed);
    }

    /// A switch packet of the group, held until the end-of-chain marker.
    pub(crate) fn dst_hold(&mut self, core: &mut Core<M>, now: Instant, pkt: Vec<u8>, meta: M) {
        let cfg = &core.cfg;
        let d = self.dst();
        debug_assert!(d.holding, "holding a packet while not holding");
        if d.held.len() >= cfg.cutover_hold_packets as usize
            || d.held_bytes + pkt.len() as u64 > cfg.cutover_hold_bytes as u64
        {
            self.lose(core, LossCause::CutoverHoldFull, pkt, meta);
            return;
        }
        d.held_bytes += pkt.len() as u64;
        d.held.push_back(Held { at: now, pkt, meta });
        debug_assert!(d.held.len() <= cfg.cutover_hold_packets as usize);
        debug_assert!(d.held_bytes <= cfg.cutover_hold_bytes as u64);
        self.st.buffered += 1;
    }

    /// Hands every held packet to the NAT (at the end of the current call), in arrival order.
    fn dst_flush(&mut self, core: &mut Core<M>, now: Instant) {
        let held = std::mem::take(&mut self.dst().held);
        debug_assert_eq!(
            held.iter().map(|h| h.pkt.len() as u64).sum::<u64>(),
            self.dst().held_bytes,
            "hold accounting"
        );
        self.dst().held_bytes = 0;
        for h in held {
            self.st.max_buffer_delay = self.st.max_buffer_delay.max(now - h.at);
            core.reprocess.push((h.pkt, h.meta));
        }
    }

    /// Stops holding and flushes.
    fn dst_release(&mut self, core: &mut Core<M>, now: Instant) {
        self.dst_flush(core, now);
        self.dst().holding = false;
    }

    /// After `ChainEnd`: stops holding once every chained packet it announced has arrived (or
    /// `cutover_hold_max` after it). After `Done`: completes likewise.
    pub(crate) fn dst_try_complete(&mut self, core: &mut Core<M>, now: Instant) {
        let rx = core.chain_rx.get(&self.peer).copied().unwrap_or(0);
        let rx_at = core
            .chain_rx_at
            .get(&self.peer)
            .copied()
            .unwrap_or(Instant::ZERO);
        let d = self.dst();
        if d.holding
            && let Some(target) = d.chain_end_target
        {
            let late = now >= d.chain_end_at + core.cfg.cutover_hold_max;
            let idle = now >= d.chain_end_at.max(rx_at) + core.cfg.chain_idle_release;
            if rx >= target || late || idle {
                if rx < target {
                    // Chained packets the marker counts never came: lost on the chain path.
                    core.counters.chain_lost += target - rx;
                    if late {
                        core.counters.hold_timeouts += 1;
                    }
                }
                self.dst_release(core, now);
            }
        }
        let Some(target) = self.dst().done_target else {
            return;
        };
        let deadline = self.dst().done_at + core.cfg.cutover_hold_max;
        if rx < target && now < deadline {
            return;
        }
        if rx < target {
            core.counters.hold_timeouts += 1;
        }
        self.dst_release(core, now);
        self.complete(core, now);
    }

    pub(crate) fn dst_timeout(&mut self, core: &mut Core<M>, now: Instant) {
        self.chan.on_timeout(now, &core.cfg);
        if self.terminal {
            return;
        }
        if self.chan.failed {
            self.dst_peer_failed(core, now, AbortReason::ChannelFailed);
            return;
        }
        if now >= self.chan.last_heard + core.cfg.peer_timeout {
            self.dst_peer_failed(core, now, AbortReason::PeerTimeout);
            return;
        }
        if self.dst().commit_job.is_some() {
            self.dst_commit_step(core, now);
        }
        if self.dst().awaits_chain() {
            self.dst_try_complete(core, now);
            if self.dst().done_target.is_some() {
                return;
            }
        }
        let hold_max = core.cfg.cutover_hold_max;
        if let Some(first) = self.dst().held.front().map(|h| h.at)
            && now >= first + hold_max
        {
            // The marker is late: let these through (holding continues for later ones).
            core.counters.hold_timeouts += 1;
            self.dst_flush(core, now);
        }
    }

    /// `rx_at`: when the last chained packet from the peer arrived.
    pub(crate) fn dst_next_timeout(
        &self,
        d: &Dst<M>,
        cfg: &MigrationConfig,
        rx_at: Instant,
    ) -> Instant {
        let mut t = self.chan.next_timeout();
        if self.terminal {
            return t;
        }
        t = t.min(self.chan.last_heard + cfg.peer_timeout);
        if d.commit_job.is_some() {
            return Instant::ZERO; // the commit goes on at the next call
        }
        if d.done_target.is_some() {
            t = t.min(d.done_at + cfg.cutover_hold_max);
        } else if d.holding
            && let Some(_) = d.chain_end_target
        {
            t = t.min(d.chain_end_at + cfg.cutover_hold_max);
            t = t.min(d.chain_end_at.max(rx_at) + cfg.chain_idle_release);
        } else if let Some(first) = d.held.front().map(|h| h.at) {
            t = t.min(first + cfg.cutover_hold_max);
        }
        t
    }
}
