//! The packet path of an [`Instance`]: processing data packets alone or in batches, holding
//! packets of frozen mappings, chaining to a peer, attributing drops, and the output queue.

use super::{Instance, Side};
use crate::report::LossCause;
use crate::{Direction, Ingress, InstanceId, Output};
use flowshift_nat::{DropReason, GroupId, MappingId, Verdict};
use flowshift_wire::Instant;

impl<M: Copy> Instance<M> {
    /// Processes one data packet (`pkt` starts at the IPv4 header) with the driver's tag
    /// `meta`. Results appear in [`poll_output`](Self::poll_output), the packet with its tag;
    /// drops are counted. With no migration running this is [`Nat::process`](flowshift_nat::Nat::process) plus one queue
    /// push.
    pub fn handle_packet(&mut self, now: Instant, mut pkt: Vec<u8>, meta: M, ingress: Ingress) {
        match ingress {
            Ingress::Switch if self.holding > 0 => match self.try_hold(now, pkt, meta) {
                Some(p) => pkt = p,
                None => return,
            },
            Ingress::Chain { from } => self.note_chained(now, from, 1),
            Ingress::Switch => {}
        }
        let v = self.core.nat.process(now, &mut pkt);
        self.dispatch(now, pkt, meta, v);
        if let Ingress::Chain { from } = ingress
            && self.awaiting_chain > 0
        {
            self.chain_progress(now, from);
        }
    }

    /// Processes a batch of packets with their tags from one ingress, in order, exactly as
    /// calling [`handle_packet`](Self::handle_packet) on each would; uses the NAT's batched
    /// fast path ([`Nat::process_batch_with`](flowshift_nat::Nat::process_batch_with)). `pkts` is left empty (its capacity can be
    /// reused).
    pub fn handle_batch(&mut self, now: Instant, pkts: &mut Vec<(Vec<u8>, M)>, ingress: Ingress) {
        if ingress == Ingress::Switch && self.holding > 0 {
            for (p, meta) in pkts.drain(..) {
                self.handle_packet(now, p, meta, ingress);
            }
            return;
        }
        if let Ingress::Chain { from } = ingress {
            self.note_chained(now, from, pkts.len() as u64);
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.core
            .nat
            .process_batch_with(now, pkts, |p| p.0.as_mut_slice(), &mut verdicts);
        debug_assert_eq!(verdicts.len(), pkts.len(), "one verdict per packet");
        for ((p, meta), v) in pkts.drain(..).zip(verdicts.iter()) {
            self.dispatch(now, p, meta, *v);
        }
        self.verdicts = verdicts;
        if let Ingress::Chain { from } = ingress
            && self.awaiting_chain > 0
        {
            self.chain_progress(now, from);
        }
    }

    fn note_chained(&mut self, now: Instant, from: InstanceId, n: u64) {
        *self.core.chain_rx.entry(from).or_default() += n;
        self.core.chain_rx_at.insert(from, now);
        self.core.counters.chained_in += n;
    }

    fn chain_progress(&mut self, now: Instant, from: InstanceId) {
        for m in self.migs.values_mut() {
            if m.peer == from && !m.terminal && matches!(m.side, Side::Dst(_)) {
                m.dst_try_complete(&mut self.core, now);
            }
        }
        self.after_call(now);
    }

    /// Destination: holds a switch packet of an incoming group; gives it back if no hold
    /// applies.
    fn try_hold(&mut self, now: Instant, pkt: Vec<u8>, meta: M) -> Option<Vec<u8>> {
        for m in self.migs.values_mut() {
            if let Side::Dst(d) = &m.side
                && d.holding
                && m.gm.matches(&pkt)
            {
                m.dst_hold(&mut self.core, now, pkt, meta);
                return None;
            }
        }
        Some(pkt)
    }

    #[inline]
    pub(super) fn dispatch(&mut self, now: Instant, pkt: Vec<u8>, meta: M, v: Verdict) {
        match v {
            Verdict::ToOutside => self.core.send(pkt, meta, Direction::ToOutside),
            Verdict::ToInside => self.core.send(pkt, meta, Direction::ToInside),
            Verdict::Drop(r) => {
                if self.running > 0 {
                    self.attribute_drop(r, &pkt);
                }
                self.core.discard(pkt, meta, r);
            }
            Verdict::ToPeer(g) => self.chain_miss(now, g, pkt, meta),
            Verdict::Hold(m) => self.hold(now, m, pkt, meta),
        }
    }

    fn attribute_drop(&mut self, r: DropReason, pkt: &[u8]) {
        let cause = match r {
            DropReason::GroupHalted => LossCause::GroupHalted,
            DropReason::GroupDraining => LossCause::GroupDraining,
            _ => return,
        };
        if let Some(m) = self
            .migs
            .values_mut()
            .find(|m| !m.terminal && matches!(m.side, Side::Src(_)) && m.gm.matches(pkt))
        {
            // The NAT counted it already.
            m.st.lost[cause as usize] += 1;
        }
    }

    fn chain_miss(&mut self, now: Instant, g: GroupId, pkt: Vec<u8>, meta: M) {
        let Some(route) = self.core.routes.iter().find(|r| r.group == g).copied() else {
            // Draining without a peer: cannot happen unless the NAT was driven around us.
            self.core.counters.internal_errors += 1;
            self.core.nat_drop(LossCause::GroupDraining, pkt, meta);
            return;
        };
        let mig = self.migs.get_mut(&route.mig);
        if route.buffering {
            match mig {
                Some(m) => m.src_prepare_buffer(&mut self.core, now, pkt, meta),
                None => self.core.nat_drop(LossCause::PrepareBufferFull, pkt, meta),
            }
            return;
        }
        let ok = self.core.chain(route.peer, pkt, meta);
        if let Some(m) = mig {
            m.src_note_chained(now, ok);
        }
    }

    fn hold(&mut self, now: Instant, id: MappingId, pkt: Vec<u8>, meta: M) {
        let Some(&(mig, why)) = self.core.frozen.get(&id) else {
            self.core.counters.internal_errors += 1;
            self.core.nat_drop(LossCause::FreezeBufferFull, pkt, meta);
            return;
        };
        match self.migs.get_mut(&mig) {
            Some(m) => m.src_hold(&mut self.core, now, why, pkt, meta),
            None => {
                self.core.counters.internal_errors += 1;
                self.core.nat_drop(LossCause::FreezeBufferFull, pkt, meta);
            }
        }
    }

    /// Next action for the driver, if any.
    pub fn poll_output(&mut self) -> Option<Output<M>> {
        self.core.pop_output()
    }

    /// Visits every data packet the instance keeps between calls, with its tag: packets
    /// buffered or held by migrations (prepare buffer, frozen mappings' packets, destination
    /// hold) and outputs not yet polled. For a driver's accounting (the simulator's ledger).
    pub fn for_each_held(&self, mut visit: impl FnMut(&[u8], &M)) {
        for o in &self.core.outputs {
            let (Output::Send { pkt, meta, .. }
            | Output::Chain { pkt, meta, .. }
            | Output::Dropped { pkt, meta, .. }) = o;
            visit(pkt, meta);
        }
        for (pkt, meta) in &self.core.reprocess {
            visit(pkt, meta);
        }
        for m in self.migs.values() {
            match &m.side {
                Side::Src(s) => s.held().for_each(|h| visit(&h.pkt, &h.meta)),
                Side::Dst(d) => d.held().for_each(|h| visit(&h.pkt, &h.meta)),
            }
        }
    }
}
