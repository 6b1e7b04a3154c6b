//! Outbound packets (subscriber to outside), hairpin included.

use super::inbound::Ingress;
use super::packet::Flow;
use super::{GroupId, GroupMode, Nat, RemoveCause, Verdict, mkey, skey};
use crate::counters::DropReason;
use crate::tcp::{Dir, TcpState};
use flowshift_wire::Instant;
use flowshift_wire::packet::{self, IcmpKind, Ipv4Header, L4, icmp_kind, proto, tcp_flags};

impl Nat {
    pub(super) fn outbound(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
        l4: L4,
        hairpin: bool,
    ) -> Verdict {
        let flow = match Flow::of_ports(l4, Dir::Out) {
            Ok(flow) => flow,
            Err((ty, ident)) => match icmp_kind(ty) {
                IcmpKind::QueryRequest | IcmpKind::QueryReply => {
                    Flow::icmp_query(ident, icmp_kind(ty) == IcmpKind::QueryRequest)
                }
                IcmpKind::Error => return self.icmp_error_out(now, pkt, h),
                IcmpKind::Other => return Verdict::Drop(DropReason::UnsupportedIcmp),
            },
        };
        let src = u32::from_be_bytes(h.src);
        let dst = u32::from_be_bytes(h.dst);
        let key = skey(Dir::Out, flow.proto, src, flow.lport, dst, flow.rport);
        let slot = match self.session_index.get(&key) {
            Some(e) => e.slot,
            None => match self.outbound_miss(now, src, dst, flow) {
                Ok(slot) => slot,
                Err(v) => return v,
            },
        };
        if let Some(v) = self.hit_blocked(slot) {
            return v;
        }
        let write = self.refresh_key(&key, now);
        let rw = self.session_rewrite(slot, Dir::Out, h, flow.proto, true);
        self.apply_session(now, pkt, slot, flow.tcp_flags, write, &rw);
        if !hairpin {
            self.counters.translated_out += 1;
            return Verdict::ToOutside;
        }
        // Hairpin (RFC 4787 REQ-9): the packet now carries the external source; deliver it to
        // the destination mapping as if it came from outside, without a second TTL decrement.
        let Ok(h2) = packet::parse_ipv4(pkt, false) else {
            return Verdict::Drop(DropReason::Truncated);
        };
        let Ok(Some(l4b)) = packet::parse_l4(h2.proto, &pkt[h2.header_len..h2.total_len]) else {
            return Verdict::Drop(DropReason::L4Truncated);
        };
        let Some(g2) = self.group_by_ext.get(&dst).copied() else {
            return Verdict::Drop(DropReason::NotOurs);
        };
        match self.inbound(now, pkt, &h2, l4b, g2, Ingress::Hairpin) {
            Verdict::ToInside => {
                self.counters.hairpinned += 1;
                Verdict::ToInside
            }
            // The source side is already translated: chaining or holding it now would hand the
            // peer a half-translated packet.
            Verdict::ToPeer(_) | Verdict::Hold(_) => Verdict::Drop(DropReason::GroupDraining),
            v => v,
        }
    }

    fn outbound_miss(
        &mut self,
        now: Instant,
        src: u32,
        dst: u32,
        flow: Flow,
    ) -> Result<u32, Verdict> {
        let g = self
            .subscriber_group(src)
            .ok_or(Verdict::Drop(DropReason::NotOurs))?;
        let mode = self.groups[g as usize]
            .as_ref()
            .map_or(GroupMode::Halted, |g| g.mode);
        match mode {
            GroupMode::Halted => return Err(Verdict::Drop(DropReason::GroupHalted)),
            GroupMode::Moved => return Err(Verdict::ToPeer(GroupId(g))),
            GroupMode::Active | GroupMode::Draining => {}
        }
        let is_syn =
            flow.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN;
        let may_create = match flow.proto {
            proto::TCP => is_syn,
            proto::ICMP => flow.icmp_request,
            _ => true,
        };
        let refused = if flow.proto == proto::TCP {
            DropReason::TcpNoSessionNonSyn
        } else {
            DropReason::NoMapping
        };
        let tcp_state = (flow.proto == proto::TCP).then_some(TcpState::SynOut);
        let m = match self
            .mapping_index
            .get(&mkey(Dir::Out, flow.proto, src, flow.lport))
        {
            Some(&m) => {
                if self.mappings[m as usize].frozen {
                    return Err(Verdict::Hold(self.mapping_id(m)));
                }
                m
            }
            None if mode == GroupMode::Draining => return Err(Verdict::ToPeer(GroupId(g))),
            None if !may_create => return Err(Verdict::Drop(refused)),
            None => self
                .create_mapping(now, g, flow.proto, src, flow.lport)
                .map_err(Verdict::Drop)?,
        };
        if !may_create {
            return Err(Verdict::Drop(refused));
        }
        self.create_session(now, m, dst, flow.rport, tcp_state, false)
            .map_err(|r| {
                self.remove_mapping_if_empty(now, m, RemoveCause::Deleted);
                Verdict::Drop(r)
            })
    }
}
