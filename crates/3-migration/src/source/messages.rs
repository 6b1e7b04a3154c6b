//! The source's answers to the destination's messages: preparation done, batch and commit
//! acknowledgements (with the freeze budget they adjust), removal of committed copies,
//! readiness, cutover, the chain's end and the drain.

use super::{REMOVE_SLICE_SESSIONS, Removal, Src};
use crate::instance::{Core, FrozenFor, Mig, Route};
use crate::proto::{self, Algorithm, Message};
use crate::{AbortReason, MigrationEvent, Phase};
use core::time::Duration;
use flowshift_nat::{GroupMode, RemoveCause};
use flowshift_wire::Instant;

impl<M: Copy> Mig<M> {
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
                    .all(|(_, m)| core.frozen.get(m) == Some(&(id, FrozenFor::Batch(batch)))),
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
            // The destination's now: removed here in slices (`src_retire_step`, from
            // `handle_timeout`), its packets chained meanwhile.
            for (_, m) in &flight.ids {
                core.frozen.insert(*m, (id, FrozenFor::Moved));
            }
            self.src()
                .retiring
                .extend(flight.ids.iter().map(|(_, id)| *id));
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
        // The next batch goes out now; the removals follow in `handle_timeout` calls.
        self.src_pump(core, now);
    }

    /// Freeze-copy: removes up to [`REMOVE_SLICE_SESSIONS`] sessions of acknowledged
    /// mappings, then sends what the window allows (and, once nothing is in flight or left to
    /// remove, moves on).
    pub(super) fn src_retire_step(&mut self, core: &mut Core<M>, now: Instant) {
        self.src_retire(core, now, REMOVE_SLICE_SESSIONS);
        self.src_pump(core, now);
    }

    /// Removes every acknowledged mapping left (a migration that gives up: what the
    /// destination holds must not be served here as well).
    pub(super) fn src_retire_all(&mut self, core: &mut Core<M>, now: Instant) {
        self.src_retire(core, now, u32::MAX);
    }

    /// Removes acknowledged mappings, oldest first, until `max_sessions` sessions are gone
    /// (the mapping that crosses it is removed whole) or none is left.
    fn src_retire(&mut self, core: &mut Core<M>, now: Instant, max_sessions: u32) {
        let mut removed = 0u32;
        while removed < max_sessions {
            let Some(id) = self.src().retiring.pop_front() else {
                break;
            };
            core.frozen.remove(&id);
            match core.nat.remove_mapping(id, now, RemoveCause::Migrated) {
                Ok(n) => {
                    removed = removed.saturating_add(n);
                    self.st.transferred += 1;
                }
                Err(_) => core.counters.internal_errors += 1,
            }
        }
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
        let copies = std::mem::take(&mut self.src().copied).len() as u32;
        self.src().removing = Some(Removal { copies, removed: 0 });
        self.src_remove_step(core, now);
    }

    /// Removes the group's mappings (the copies: a halted or moved group creates none), newest
    /// first, up to [`REMOVE_SLICE_SESSIONS`] sessions per call; after the last, the source is
    /// ready for the cutover. A copy that expired here meanwhile is gone already: fine, the
    /// destination's copy expires there too.
    pub(super) fn src_remove_step(&mut self, core: &mut Core<M>, now: Instant) {
        let Some(mut r) = self.src().removing.take() else {
            return;
        };
        let mut sessions = 0u32;
        while sessions < REMOVE_SLICE_SESSIONS {
            let Ok(Some(id)) = core.nat.group_newest_mapping(self.group) else {
                if r.removed > r.copies {
                    // Cannot happen: more mappings than copies.
                    core.counters.internal_errors += 1;
                    self.st.in_doubt = r.removed - r.copies;
                }
                self.src_ready(core, now);
                return;
            };
            match core.nat.remove_mapping(id, now, RemoveCause::Migrated) {
                Ok(n) => sessions = sessions.saturating_add(n.max(1)),
                Err(_) => {
                    // The newest mapping is live: cannot happen.
                    core.counters.internal_errors += 1;
                    self.src_ready(core, now);
                    return;
                }
            }
            r.removed += 1;
        }
        self.src().removing = Some(r);
    }

    pub(super) fn src_ready(&mut self, core: &mut Core<M>, now: Instant) {
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
    pub(super) fn src_chain_end_due(&self, s: &Src<M>) -> Instant {
        let q = self.params.chain_quiet;
        (s.cutover_at.max(s.last_chained_at) + q).min(s.drain_until)
    }

    /// Sends the end-of-chain marker: every packet of the group chained so far is counted in
    /// it, so the destination can stop holding once that many chained packets have arrived.
    pub(super) fn src_send_chain_end(&mut self, core: &mut Core<M>, now: Instant) {
        let chained = core.chain_tx.get(&self.peer).copied().unwrap_or(0);
        self.chan.send(
            now,
            &Message::ChainEnd(proto::ChainEnd { chained }),
            &core.cfg,
        );
        self.src().chain_end_sent = true;
        self.st.chain_end_after = now - self.src_ref().cutover_at;
    }

    pub(super) fn src_drained(&mut self, core: &mut Core<M>, now: Instant) {
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
