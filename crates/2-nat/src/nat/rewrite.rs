//! The precomputed rewrite of a translated packet.

use flowshift_wire::checksum::Delta;
use flowshift_wire::packet::{field, get_u16, proto, set_addr, set_u16};

/// The delta of decrementing the TTL in the (TTL, protocol) header word.
#[inline(always)]
pub(super) fn ttl_delta(ttl: u8, proto: u8) -> Delta {
    Delta::NONE.replace(
        u16::from_be_bytes([ttl, proto]),
        u16::from_be_bytes([ttl.wrapping_sub(1), proto]),
    )
}

/// The precomputed rewrite of a translated packet: one address and one port (or ICMP
/// identifier), the TTL, and the IPv4 and transport checksums, incrementally (RFC 1624).
#[derive(Clone, Copy, Debug)]
pub(super) struct Rewrite {
    /// IPv4 header length: where the transport header starts.
    pub(super) ihl: usize,
    /// IP protocol: TCP, UDP, or ICMP (anything else is rewritten as ICMP).
    pub(super) proto: u8,
    /// Rewrite the source address and port (outbound); the destination ones otherwise.
    pub(super) source: bool,
    /// Decrement the TTL (false on the second half of a hairpin, decremented by the first).
    pub(super) decrement_ttl: bool,
    /// Rewrite the transport header too (false on non-first fragments, which have none).
    pub(super) with_l4: bool,
    /// The new address.
    pub(super) addr: [u8; 4],
    /// The new port (or ICMP identifier).
    pub(super) port: u16,
    /// The IPv4 header checksum delta of the address change (the TTL's is added here).
    pub(super) ip_delta: Delta,
    /// The transport checksum delta of the address and port change.
    pub(super) l4_delta: Delta,
}

impl Rewrite {
    /// Rewrites `pkt` (starting at its IPv4 header) in place.
    #[inline(always)]
    pub(super) fn apply(&self, pkt: &mut [u8]) {
        let Rewrite {
            ihl,
            proto,
            source,
            decrement_ttl,
            with_l4,
            addr,
            port,
            ip_delta,
            l4_delta,
        } = *self;
        let mut ipd = ip_delta;
        if decrement_ttl {
            let ttl = pkt[field::IPV4_TTL];
            ipd = ipd.then(ttl_delta(ttl, pkt[9]));
            pkt[field::IPV4_TTL] = ttl.wrapping_sub(1);
        }
        let c = get_u16(pkt, field::IPV4_CHECKSUM).unwrap_or(0);
        set_u16(pkt, field::IPV4_CHECKSUM, ipd.apply(c));
        let addr_field = if source {
            field::IPV4_SRC
        } else {
            field::IPV4_DST
        };
        set_addr(pkt, addr_field, addr);
        if !with_l4 {
            return;
        }
        let l4 = &mut pkt[ihl..];
        let port_field = if source {
            field::SRC_PORT
        } else {
            field::DST_PORT
        };
        match proto {
            proto::TCP => {
                set_u16(l4, port_field, port);
                let c = get_u16(l4, field::TCP_CHECKSUM).unwrap_or(0);
                set_u16(l4, field::TCP_CHECKSUM, l4_delta.apply(c));
            }
            proto::UDP => {
                set_u16(l4, port_field, port);
                let c = get_u16(l4, field::UDP_CHECKSUM).unwrap_or(0);
                set_u16(l4, field::UDP_CHECKSUM, l4_delta.apply_udp(c));
            }
            _ => {
                set_u16(l4, field::ICMP_IDENT, port);
                let c = get_u16(l4, field::ICMP_CHECKSUM).unwrap_or(0);
                set_u16(l4, field::ICMP_CHECKSUM, l4_delta.apply(c));
            }
        }
    }
}
