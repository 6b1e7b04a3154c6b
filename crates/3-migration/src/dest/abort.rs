//! The destination's ends other than completion: the source reverted or failed, the
//! controller aborted the migration or gave the group to this instance or another.

use crate::AbortReason;
use crate::instance::{Core, Mig};
use crate::proto::{Algorithm, Message};
use flowshift_nat::{GroupMode, RemoveCause};
use flowshift_wire::Instant;

impl<M: Copy> Mig<M> {
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
}
