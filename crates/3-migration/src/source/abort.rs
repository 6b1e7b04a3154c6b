//! Abort and failure on the source side: whether a migration can still be reverted,
//! reverting it, adopting the group back, and giving up while keeping what is held here.

use crate::instance::{Core, Mig, Side};
use crate::proto::{Algorithm, Message};
use crate::{AbortOutcome, AbortReason, Phase};
use flowshift_nat::GroupMode;
use flowshift_wire::Instant;

impl<M: Copy> Mig<M> {
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
    pub(super) fn src_revert(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        reason: AbortReason,
        notify: bool,
    ) {
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
        // Acknowledged mappings are the destination's: not served here any more.
        self.src_retire_all(core, now);
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
}
