//! The fragment table: later fragments follow the translation of the first one.

use super::rewrite::ttl_delta;
use super::{NIL, Nat, S_LIVE, Verdict};
use crate::counters::DropReason;
use flowshift_wire::Instant;
use flowshift_wire::checksum::Delta;
use flowshift_wire::packet::{self, Ipv4Header, field, get_u16, set_addr, set_u16};

#[derive(Clone, Copy)]
pub(super) struct FragEntry {
    slot: u32,
    generation: u32,
    new_src: [u8; 4],
    new_dst: [u8; 4],
    ip_delta: Delta,
    verdict: Verdict,
    deadline: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct FragKey(u64, u32);

impl Nat {
    fn frag_key(h: &Ipv4Header) -> FragKey {
        FragKey(
            (u32::from_be_bytes(h.src) as u64) << 32 | u32::from_be_bytes(h.dst) as u64,
            (h.ident as u32) << 8 | h.proto as u32,
        )
    }

    pub(super) fn remember_fragment(
        &mut self,
        now: Instant,
        pkt: &[u8],
        h: &Ipv4Header,
        verdict: Verdict,
    ) {
        let slot = self.last_session;
        if slot == NIL {
            return;
        }
        let (Some(new_src), Some(new_dst)) = (
            packet::get_addr(pkt, field::IPV4_SRC),
            packet::get_addr(pkt, field::IPV4_DST),
        ) else {
            return;
        };
        let key = Self::frag_key(h);
        if self.frags.contains_key(&key) {
            return;
        }
        let deadline = now + self.cfg.fragment_timeout;
        let ip_delta = Delta::NONE
            .replace_addr(h.src, new_src)
            .replace_addr(h.dst, new_dst);
        let generation = self.sessions[slot as usize].generation;
        self.frags.insert(
            key,
            FragEntry {
                slot,
                generation,
                new_src,
                new_dst,
                ip_delta,
                verdict,
                deadline,
            },
        );
        self.frag_fifo.push_back((key, deadline));
    }

    pub(super) fn later_fragment(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
    ) -> Verdict {
        let Some(f) = self.frags.get(&Self::frag_key(h)).copied() else {
            return Verdict::Drop(DropReason::FragmentNoState);
        };
        debug_assert!(
            (f.slot as usize) < self.sessions.len(),
            "fragment's session slot in range (slabs never shrink)"
        );
        let s = &self.sessions[f.slot as usize];
        if f.deadline <= now || s.flags & S_LIVE == 0 || s.generation != f.generation {
            return Verdict::Drop(DropReason::FragmentNoState);
        }
        if let Some(v) = self.hit_blocked(f.slot) {
            return v;
        }
        let ttl = pkt[field::IPV4_TTL];
        let delta = f.ip_delta.then(ttl_delta(ttl, pkt[9]));
        pkt[field::IPV4_TTL] = ttl - 1;
        set_addr(pkt, field::IPV4_SRC, f.new_src);
        set_addr(pkt, field::IPV4_DST, f.new_dst);
        let c = get_u16(pkt, field::IPV4_CHECKSUM).unwrap_or(0);
        set_u16(pkt, field::IPV4_CHECKSUM, delta.apply(c));
        match f.verdict {
            Verdict::ToOutside => self.counters.translated_out += 1,
            _ => self.counters.translated_in += 1,
        }
        f.verdict
    }

    pub(super) fn expire_fragments(&mut self, now: Instant) {
        while let Some(&(key, deadline)) = self.frag_fifo.front() {
            if deadline > now {
                break;
            }
            self.frag_fifo.pop_front();
            if self.frags.get(&key).is_some_and(|f| f.deadline == deadline) {
                self.frags.remove(&key);
            }
        }
    }
}
