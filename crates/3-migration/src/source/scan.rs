//! The source's work that grows with the group's size, done in slices between packet batches:
//! scanning the group (freeze order, stop-copy and pre-copy rounds), and the rounds themselves.

use super::{RoundReport, SCAN_SLICE, SCAN_SLICE_SESSIONS};
use crate::instance::{Core, Mig, Side};
use crate::proto::{self, Algorithm, MappingKey, Message};
use crate::{MigrationEvent, Phase};
use flowshift_nat::{GroupMode, MappingId};
use flowshift_wire::Instant;
use std::collections::{BTreeMap, VecDeque};

/// What a scan computes.
pub(super) enum ScanGoal {
    /// The freeze order: mappings by port block, with each block's latest packet.
    FreezeOrder(BTreeMap<u32, (Instant, Vec<MappingId>)>),
    /// A stop-copy or pre-copy round: the mappings to copy (new or dirty).
    Round {
        round: u32,
        last: bool,
        queue: VecDeque<(u32, MappingId)>,
        new: u32,
        dirty: u32,
    },
}

/// A scan of the group's mappings in slices of [`SCAN_SLICE`].
pub(super) struct Scan {
    pub ids: Vec<MappingId>,
    pub pos: usize,
    pub goal: ScanGoal,
}

impl<M: Copy> Mig<M> {
    /// Starts scanning the group's mappings: lists them (this call's work); the slices follow
    /// from the next call on (`src_timeout`).
    pub(super) fn src_begin_scan(&mut self, core: &mut Core<M>, goal: ScanGoal) {
        let ids = core.nat.group_mappings(self.group).unwrap_or_default();
        self.src().scan = Some(Box::new(Scan { ids, pos: 0, goal }));
    }

    /// Examines the next [`SCAN_SLICE`] mappings, or fewer once they held
    /// [`SCAN_SLICE_SESSIONS`] sessions (a mapping's sessions are walked for its last packet);
    /// at the end of the scan, moves on (freeze order: built; round: set up), and the next
    /// call starts sending.
    ///
    /// Freeze order: port block by port block (a block's mappings always travel in one batch,
    /// see `src_build_batch`), the idlest block (oldest most recent packet among its
    /// mappings) first. A mapping that dies during the scan is skipped (its handle no longer
    /// resolves).
    pub(super) fn src_scan_step(&mut self, core: &mut Core<M>, now: Instant) {
        let nc = core.nat.config();
        let (port_min, block_size) = (nc.port_min, nc.block_size.max(1) as u32);
        let Some(mut scan) = self.src().scan.take() else {
            return;
        };
        debug_assert!(scan.pos <= scan.ids.len(), "scan position inside the scan");
        let copied = &mut self.src().copied;
        let (start, mut next, mut sessions) = (scan.pos, scan.pos, 0u32);
        while next < scan.ids.len() && next - start < SCAN_SLICE && sessions < SCAN_SLICE_SESSIONS {
            let (i, id) = (next, scan.ids[next]);
            next += 1;
            let Ok(info) = core.nat.mapping_info(id) else {
                continue;
            };
            sessions = sessions.saturating_add(info.sessions);
            match &mut scan.goal {
                ScanGoal::FreezeOrder(blocks) => {
                    if core.frozen.contains_key(&id) {
                        continue;
                    }
                    let block = info.external_port.saturating_sub(port_min) as u32 / block_size;
                    let e = blocks.entry(block).or_insert((Instant::ZERO, Vec::new()));
                    e.0 = e.0.max(info.last_seen);
                    e.1.push(id);
                }
                // Run keys are unique here: no block grouping is needed when the destination
                // does not serve the group before the commit.
                ScanGoal::Round {
                    round,
                    queue,
                    new,
                    dirty,
                    ..
                } => match copied.get_mut(&id) {
                    None => {
                        *new += 1;
                        queue.push_back((i as u32, id));
                    }
                    Some(c) => {
                        c.round = *round;
                        if info.last_seen >= c.at || info.sessions != c.sessions {
                            *dirty += 1;
                            queue.push_back((i as u32, id));
                        }
                    }
                },
            }
        }
        scan.pos = next;
        if scan.pos < scan.ids.len() {
            self.src().scan = Some(scan);
            return;
        }
        match scan.goal {
            ScanGoal::FreezeOrder(blocks) => {
                let mut order: Vec<(Instant, u32, Vec<MappingId>)> = blocks
                    .into_iter()
                    .map(|(b, (last, ids))| (last, b, ids))
                    .collect();
                order.sort_by_key(|(last, b, _)| (*last, *b));
                let total = order.iter().map(|(_, _, ids)| ids.len()).sum();
                let queue = &mut self.src().queue;
                queue.clear();
                queue.reserve(total);
                for (_, b, ids) in order {
                    queue.extend(ids.into_iter().map(|id| (b, id)));
                }
                debug_assert!(
                    self.src_ref().queue.len() <= scan.ids.len(),
                    "the freeze order holds scanned mappings only"
                );
                if self.src_ref().queue.is_empty()
                    && core.nat.group_stats(self.group).map_or(0, |s| s.mappings) != 0
                {
                    // Every mapping left is frozen by another migration: cannot happen.
                    core.counters.internal_errors += 1;
                    return;
                }
                if self.src_ref().queue.is_empty() {
                    self.src_pump(core, now);
                } else {
                    // Building the order was this call's slice: the batches go out from the
                    // next call on (`src_timeout`).
                    self.src().pump_due = true;
                }
            }
            ScanGoal::Round {
                round,
                last,
                queue,
                new,
                dirty,
            } => self.src_round_scanned(core, now, round, last, queue, new, dirty),
        }
    }

    // ---------------------------------------------------------- stop-copy and pre-copy

    pub(super) fn src_start_round(&mut self, core: &mut Core<M>, now: Instant, last: bool) {
        let g = self.group;
        if last {
            core.set_mode(g, GroupMode::Halted);
            let s = self.src();
            if s.halted_at.is_none() {
                s.halted_at = Some(now);
            }
            self.set_phase(core, now, Phase::StopCopy);
        } else {
            self.set_phase(core, now, Phase::Rounds);
        }
        let mappings = core.nat.group_stats(g).map_or(0, |s| s.mappings) as usize;
        let s = self.src();
        // Sized once for the whole group rather than grown (and rehashed) mid-round.
        s.copied.reserve(mappings.saturating_sub(s.copied.len()));
        let round = s.next_round_number();
        s.round_started = now;
        s.next_round = None;
        let goal = ScanGoal::Round {
            round,
            last,
            queue: VecDeque::new(),
            new: 0,
            dirty: 0,
        };
        self.src_begin_scan(core, goal);
    }

    /// A round's scan is complete: delete what died, then send the new and dirty mappings.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn src_round_scanned(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        round: u32,
        last: bool,
        queue: VecDeque<(u32, MappingId)>,
        new: u32,
        dirty: u32,
    ) {
        let s = self.src();
        debug_assert!(s.round.is_none(), "one round at a time");
        debug_assert!(
            queue.len() as u64 == new as u64 + dirty as u64,
            "queued = new + dirty"
        );
        let mut dead: Vec<MappingKey> = Vec::new();
        s.copied.retain(|_, c| {
            // Entries not seen by this scan died (new ones are inserted when sent).
            let alive = c.round == round;
            if !alive {
                dead.push(c.key);
            }
            alive
        });
        dead.sort_unstable();
        s.queue = queue;
        s.round = Some(RoundReport {
            round,
            copied: 0,
            dirty,
            new,
            dead: dead.len() as u32,
            records: 0,
            last,
        });
        for chunk in dead.chunks(proto::MAX_DELETE_KEYS) {
            self.chan
                .send(now, &Message::Delete(chunk.to_vec()), &core.cfg);
        }
        // The scan's last slice was this call's work: the batches go out from the next call.
        self.src().pump_due = true;
    }

    pub(super) fn src_round_done(&mut self, core: &mut Core<M>, now: Instant) {
        let Some(r) = self.src().round.take() else {
            return;
        };
        if self.algorithm == Algorithm::PreCopy {
            self.st.rounds.push(r);
            core.event(MigrationEvent::PrecopyRound {
                migration: self.id,
                round: r.round,
                copied: r.copied,
                dirty: r.dirty,
                new: r.new,
                dead: r.dead,
                last: r.last,
            });
        }
        if r.last {
            let s = self.src();
            let commit = proto::Commit {
                mappings: s.copied.len() as u32,
                records: s.copied.values().map(|c| c.sessions).sum(),
            };
            s.commit_sent = true;
            self.chan.send(now, &Message::Commit(commit), &core.cfg);
            return;
        }
        let p = &self.params;
        let last_next = r.copied <= p.precopy_stop_threshold
            || r.round + 1 >= p.precopy_max_rounds
            || matches!(&self.side, Side::Src(s) if s.forward);
        let at = self.src().round_started + self.params.precopy_min_round_interval;
        if at <= now {
            self.src_start_round(core, now, last_next);
        } else {
            self.src().next_round = Some((at, last_next));
        }
    }
}
