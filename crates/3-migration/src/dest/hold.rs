//! The cutover hold: switch packets of the group held until the chain is empty, then
//! released in arrival order; completion once `Done`'s chained packets have arrived.

use crate::instance::{Core, Held, Mig};
use crate::report::LossCause;
use flowshift_wire::Instant;

impl<M: Copy> Mig<M> {
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
    pub(super) fn dst_flush(&mut self, core: &mut Core<M>, now: Instant) {
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
    pub(super) fn dst_release(&mut self, core: &mut Core<M>, now: Instant) {
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
}
