//! The destination's timers: channel retransmission, peer silence, commit slices and hold
//! deadlines.

use super::Dst;
use crate::AbortReason;
use crate::config::MigrationConfig;
use crate::instance::{Core, Mig};
use flowshift_wire::Instant;

impl<M: Copy> Mig<M> {
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
