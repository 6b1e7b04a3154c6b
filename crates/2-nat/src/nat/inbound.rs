//! Inbound packets (outside to subscriber), and the second half of a hairpin.

use super::packet::Flow;
use super::{GroupId, GroupMode, NIL, Nat, Verdict, skey};
use crate::config::Filtering;
use crate::counters::DropReason;
use crate::ports::PortProto;
use crate::tcp::{Dir, TcpState};
use flowshift_wire::Instant;
use flowshift_wire::packet::{IcmpKind, Ipv4Header, L4, icmp_kind, proto, tcp_flags};

/// How a packet reached the inbound path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ingress {
    /// From the network: decrement the TTL; a subscriber source means hairpin.
    FromNetwork,
    /// Second half of a hairpin: already translated outbound, TTL already decremented.
    Hairpin,
}

impl Nat {
    pub(super) fn inbound(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
        l4: L4,
        g: u16,
        ingress: Ingress,
    ) -> Verdict {
        let decrement_ttl = ingress == Ingress::FromNetwork;
        let flow = match Flow::of_ports(l4, Dir::In) {
            Ok(flow) => flow,
            Err((ty, ident)) => match icmp_kind(ty) {
                IcmpKind::QueryReply => Flow::icmp_query(ident, false),
                // Unsolicited queries to the external address are not answered.
                IcmpKind::QueryRequest => return Verdict::Drop(DropReason::NoMapping),
                IcmpKind::Error if self.subscriber_group(u32::from_be_bytes(h.src)).is_none() => {
                    return self.icmp_error_in(now, pkt, h, g);
                }
                IcmpKind::Error => return self.icmp_error_hairpin(now, pkt, h, g),
                IcmpKind::Other => return Verdict::Drop(DropReason::UnsupportedIcmp),
            },
        };
        let src = u32::from_be_bytes(h.src);
        let dst = u32::from_be_bytes(h.dst);
        let key = skey(Dir::In, flow.proto, dst, flow.lport, src, flow.rport);
        let slot = match self.session_index.get(&key) {
            Some(e) => e.slot,
            // A subscriber sending to an external address of this NAT: hairpin. (An inbound
            // session never has a subscriber as its remote, so a hit above is never one.)
            None if ingress == Ingress::FromNetwork && self.subscriber_group(src).is_some() => {
                // Keep the bytes the outbound half rewrites (IP header, ports, L4 checksum) so a
                // refused hairpin leaves the packet unchanged, as `process` promises.
                let mut saved = [0u8; 80];
                let n = pkt.len().min(h.header_len + 20).min(saved.len());
                saved[..n].copy_from_slice(&pkt[..n]);
                let v = self.outbound(now, pkt, h, l4, true);
                if !matches!(v, Verdict::ToInside | Verdict::ToOutside) {
                    pkt[..n].copy_from_slice(&saved[..n]);
                }
                return v;
            }
            None => match self.inbound_miss(now, g, dst, src, flow) {
                Ok(slot) => slot,
                Err(v) => return v,
            },
        };
        if let Some(v) = self.hit_blocked(slot) {
            return v;
        }
        let write = self.cfg.inbound_refresh && self.refresh_key(&key, now);
        let rw = self.session_rewrite(slot, Dir::In, h, flow.proto, decrement_ttl);
        self.apply_session(now, pkt, slot, flow.tcp_flags, write, &rw);
        self.counters.translated_in += 1;
        Verdict::ToInside
    }

    fn inbound_miss(
        &mut self,
        now: Instant,
        g: u16,
        dst: u32,
        src: u32,
        flow: Flow,
    ) -> Result<u32, Verdict> {
        let mode = self.groups[g as usize]
            .as_ref()
            .map_or(GroupMode::Halted, |g| g.mode);
        match mode {
            GroupMode::Halted => return Err(Verdict::Drop(DropReason::GroupHalted)),
            GroupMode::Moved => return Err(Verdict::ToPeer(GroupId(g))),
            GroupMode::Active | GroupMode::Draining => {}
        }
        // The group of external address `dst` (the caller looked it up) holds the mapping of
        // each of its ports.
        let m = match self.groups[g as usize].as_ref().and_then(|group| {
            debug_assert_eq!(group.ext, dst, "the group of the destination");
            group
                .ports
                .mapping(flow.lport, PortProto::from_ip_proto(flow.proto)?)
        }) {
            Some(m) => m,
            None if mode == GroupMode::Draining => return Err(Verdict::ToPeer(GroupId(g))),
            None => return Err(Verdict::Drop(DropReason::NoMapping)),
        };
        if self.mappings[m as usize].frozen {
            return Err(Verdict::Hold(self.mapping_id(m)));
        }
        if self.cfg.filtering == Filtering::AddressDependent && !self.mapping_has_remote(m, src) {
            return Err(Verdict::Drop(DropReason::Filtered));
        }
        let tcp_state = if flow.proto == proto::TCP {
            if flow.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) != tcp_flags::SYN
            {
                return Err(Verdict::Drop(DropReason::TcpInboundNoSession));
            }
            Some(TcpState::SynIn)
        } else {
            None
        };
        self.create_session(now, m, src, flow.rport, tcp_state, true)
            .map_err(Verdict::Drop)
    }

    fn mapping_has_remote(&self, m: u32, rem: u32) -> bool {
        let mut s = self.mappings[m as usize].first_session;
        while s != NIL {
            let sess = &self.sessions[s as usize];
            if sess.rem_addr == rem {
                return true;
            }
            s = sess.next;
        }
        false
    }
}
