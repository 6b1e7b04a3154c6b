//! ICMP errors (RFC 5508): translating the embedded packet.

use super::packet::parse_drop;
use super::rewrite::ttl_delta;
use super::{GroupId, GroupMode, Nat, Verdict, skey};
use crate::counters::DropReason;
use crate::tcp::Dir;
use flowshift_wire::Instant;
use flowshift_wire::checksum::{self, Delta};
use flowshift_wire::packet::{self, Ipv4Header, field, get_u16, proto, set_addr, set_u16};

/// The headers of the packet embedded in an ICMP error.
struct Embedded {
    off: usize,
    ihl: usize,
    proto: u8,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
}

impl Nat {
    fn embedded(pkt: &[u8], h: &Ipv4Header) -> Option<Embedded> {
        let off = h.header_len + packet::ICMP_HEADER;
        let inner = pkt.get(off..h.total_len)?;
        if inner.len() < packet::IPV4_MIN_HEADER || inner[0] >> 4 != 4 {
            return None;
        }
        let ihl = (inner[0] & 0x0f) as usize * 4;
        if ihl < packet::IPV4_MIN_HEADER || inner.len() < ihl + 8 {
            return None;
        }
        let proto = inner[9];
        let l4 = &inner[ihl..];
        let (sport, dport) = match proto {
            proto::TCP | proto::UDP => (get_u16(l4, 0)?, get_u16(l4, 2)?),
            proto::ICMP => {
                let id = get_u16(l4, field::ICMP_IDENT)?;
                (id, id)
            }
            _ => return None,
        };
        Some(Embedded {
            off,
            ihl,
            proto,
            src: u32::from_be_bytes(packet::get_addr(inner, field::IPV4_SRC)?),
            dst: u32::from_be_bytes(packet::get_addr(inner, field::IPV4_DST)?),
            sport,
            dport,
        })
    }

    /// An error from outside about a packet this NAT sent out (inner source = external).
    pub(super) fn icmp_error_in(
        &mut self,
        _now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
        g: u16,
    ) -> Verdict {
        if !checksum::verify(&pkt[h.header_len..h.total_len]) {
            return Verdict::Drop(DropReason::BadIcmpChecksum);
        }
        let Some(e) = Self::embedded(pkt, h) else {
            return Verdict::Drop(DropReason::IcmpErrorMalformed);
        };
        let (lport, rport) = if e.proto == proto::ICMP {
            (e.sport, 0)
        } else {
            (e.sport, e.dport)
        };
        let key = skey(Dir::In, e.proto, e.src, lport, e.dst, rport);
        let Some(slot) = self
            .session_index
            .get(&key)
            .map(|x| x.slot)
            .filter(|_| e.src == u32::from_be_bytes(h.dst))
        else {
            return self.icmp_error_without_session(g);
        };
        if let Some(v) = self.hit_blocked(slot) {
            return v;
        }
        let s = &self.sessions[slot as usize];
        let (int_addr, int_port) = (s.int_addr.to_be_bytes(), s.int_port);
        let (ip_delta, l4_delta) = (
            Delta::from_raw(s.ip_delta).inverse(),
            Delta::from_raw(s.l4_delta).inverse(),
        );
        rewrite_outer_addr(pkt, field::IPV4_DST, int_addr, ip_delta);
        // Only the ICMP message: bytes past the total length are not the packet's.
        rewrite_embedded(
            &mut pkt[..h.total_len],
            &e,
            field::IPV4_SRC,
            true,
            int_addr,
            int_port,
            ip_delta,
            l4_delta,
        );
        refill_icmp_checksum(pkt, h);
        self.last_session = slot;
        self.counters.translated_in += 1;
        Verdict::ToInside
    }

    /// An error from a subscriber about a hairpinned packet (RFC 5508 REQ-7), addressed to an
    /// external address of group `g`: translated out (as from the sender's mapping), then in
    /// (towards the subscriber that sent the quoted packet), with one TTL decrement. A refused
    /// second half leaves the packet unchanged.
    pub(super) fn icmp_error_hairpin(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
        g: u16,
    ) -> Verdict {
        // Rare path: a copy of the message to restore it if the inbound half refuses it.
        let saved = pkt[..h.total_len].to_vec();
        let v = self.icmp_error_out(now, pkt, h);
        if v != Verdict::ToOutside {
            return v;
        }
        self.counters.translated_out -= 1;
        let v = match packet::parse_ipv4(pkt, false) {
            Ok(h2) => self.icmp_error_in(now, pkt, &h2, g),
            Err(e) => Verdict::Drop(parse_drop(e)),
        };
        match v {
            Verdict::ToInside => {
                // Both halves decremented the TTL: one decrement only, header checksum redone.
                pkt[field::IPV4_TTL] = h.ttl - 1;
                set_u16(pkt, field::IPV4_CHECKSUM, 0);
                let c = checksum::compute(&pkt[..h.header_len]);
                set_u16(pkt, field::IPV4_CHECKSUM, c);
                self.counters.hairpinned += 1;
                Verdict::ToInside
            }
            v => {
                pkt[..h.total_len].copy_from_slice(&saved);
                match v {
                    Verdict::ToPeer(_) | Verdict::Hold(_) => {
                        Verdict::Drop(DropReason::GroupDraining)
                    }
                    v => v,
                }
            }
        }
    }

    /// An error from a subscriber about a packet this NAT sent in (inner destination = internal).
    pub(super) fn icmp_error_out(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
    ) -> Verdict {
        let _ = now;
        if !checksum::verify(&pkt[h.header_len..h.total_len]) {
            return Verdict::Drop(DropReason::BadIcmpChecksum);
        }
        let Some(e) = Self::embedded(pkt, h) else {
            return Verdict::Drop(DropReason::IcmpErrorMalformed);
        };
        let src = u32::from_be_bytes(h.src);
        let Some(g) = self.subscriber_group(src) else {
            return Verdict::Drop(DropReason::NotOurs);
        };
        let (lport, rport) = if e.proto == proto::ICMP {
            (e.dport, 0)
        } else {
            (e.dport, e.sport)
        };
        let key = skey(Dir::Out, e.proto, e.dst, lport, e.src, rport);
        let Some(slot) = self
            .session_index
            .get(&key)
            .map(|x| x.slot)
            .filter(|_| e.dst == src)
        else {
            return self.icmp_error_without_session(g);
        };
        if let Some(v) = self.hit_blocked(slot) {
            return v;
        }
        let s = &self.sessions[slot as usize];
        let ext = self.groups[s.group as usize]
            .as_ref()
            .map_or(0, |g| g.ext)
            .to_be_bytes();
        let (ext_port, ip_delta, l4_delta) = (
            s.ext_port,
            Delta::from_raw(s.ip_delta),
            Delta::from_raw(s.l4_delta),
        );
        rewrite_outer_addr(pkt, field::IPV4_SRC, ext, ip_delta);
        // Only the ICMP message: bytes past the total length are not the packet's.
        rewrite_embedded(
            &mut pkt[..h.total_len],
            &e,
            field::IPV4_DST,
            false,
            ext,
            ext_port,
            ip_delta,
            l4_delta,
        );
        refill_icmp_checksum(pkt, h);
        self.last_session = slot;
        self.counters.translated_out += 1;
        Verdict::ToOutside
    }

    /// The verdict for an ICMP error whose embedded packet names no session of group `g`:
    /// a draining or moved group hands it to the peer (the session may be there), others drop.
    fn icmp_error_without_session(&self, g: u16) -> Verdict {
        let draining = self.groups[g as usize]
            .as_ref()
            .is_some_and(|g| matches!(g.mode, GroupMode::Draining | GroupMode::Moved));
        if draining {
            Verdict::ToPeer(GroupId(g))
        } else {
            Verdict::Drop(DropReason::IcmpErrorNoSession)
        }
    }
}
/// Rewrites the outer address of an ICMP error and its header checksum (with TTL decrement).
fn rewrite_outer_addr(pkt: &mut [u8], off: usize, addr: [u8; 4], ip_delta: Delta) {
    let ttl = pkt[field::IPV4_TTL];
    let d = ip_delta.then(ttl_delta(ttl, pkt[9]));
    pkt[field::IPV4_TTL] = ttl.wrapping_sub(1);
    let c = get_u16(pkt, field::IPV4_CHECKSUM).unwrap_or(0);
    set_u16(pkt, field::IPV4_CHECKSUM, d.apply(c));
    set_addr(pkt, off, addr);
}

/// Rewrites the embedded packet of an ICMP error: one address (at `addr_off` in its header),
/// the matching port or identifier, its header checksum, and its transport checksum when the
/// bytes are present (RFC 5508 section 4.2).
#[allow(clippy::too_many_arguments)]
fn rewrite_embedded(
    pkt: &mut [u8],
    e: &Embedded,
    addr_off: usize,
    source_port: bool,
    addr: [u8; 4],
    port: u16,
    ip_delta: Delta,
    l4_delta: Delta,
) {
    let Some(inner) = pkt.get_mut(e.off..) else {
        return;
    };
    let c = get_u16(inner, field::IPV4_CHECKSUM).unwrap_or(0);
    set_u16(inner, field::IPV4_CHECKSUM, ip_delta.apply(c));
    set_addr(inner, addr_off, addr);
    let Some(l4) = inner.get_mut(e.ihl..) else {
        return;
    };
    match e.proto {
        proto::TCP | proto::UDP => {
            set_u16(
                l4,
                if source_port {
                    field::SRC_PORT
                } else {
                    field::DST_PORT
                },
                port,
            );
            if e.proto == proto::TCP {
                if let Some(c) = get_u16(l4, field::TCP_CHECKSUM) {
                    set_u16(l4, field::TCP_CHECKSUM, l4_delta.apply(c));
                }
            } else if let Some(c) = get_u16(l4, field::UDP_CHECKSUM) {
                set_u16(l4, field::UDP_CHECKSUM, l4_delta.apply_udp(c));
            }
        }
        _ => {
            set_u16(l4, field::ICMP_IDENT, port);
            if let Some(c) = get_u16(l4, field::ICMP_CHECKSUM) {
                set_u16(l4, field::ICMP_CHECKSUM, l4_delta.apply(c));
            }
        }
    }
}

/// Recomputes the checksum of the outer ICMP message (its payload changed in several places).
fn refill_icmp_checksum(pkt: &mut [u8], h: &Ipv4Header) {
    let Some(icmp) = pkt.get_mut(h.header_len..h.total_len) else {
        return;
    };
    set_u16(icmp, field::ICMP_CHECKSUM, 0);
    let c = checksum::compute(icmp);
    set_u16(icmp, field::ICMP_CHECKSUM, c);
}
