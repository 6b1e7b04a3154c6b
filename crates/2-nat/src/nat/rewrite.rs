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

/// The precomputed rewrite of the fast path: one address and one port (or ICMP identifier),
/// the TTL, and the IPv4 and transport checksums, incrementally. `source` picks which side is
/// rewritten. `with_l4` is false for non-first fragments (no transport header).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn rewrite(
    pkt: &mut [u8],
    ihl: usize,
    proto: u8,
    source: bool,
    decrement_ttl: bool,
    addr: [u8; 4],
    port: u16,
    ip_delta: Delta,
    l4_delta: Delta,
    with_l4: bool,
) {
    let mut ipd = ip_delta;
    if decrement_ttl {
        let ttl = pkt[field::IPV4_TTL];
        ipd = ipd.then(ttl_delta(ttl, pkt[9]));
        pkt[field::IPV4_TTL] = ttl.wrapping_sub(1);
    }
    let c = get_u16(pkt, field::IPV4_CHECKSUM).unwrap_or(0);
    set_u16(pkt, field::IPV4_CHECKSUM, ipd.apply(c));
    set_addr(
        pkt,
        if source {
            field::IPV4_SRC
        } else {
            field::IPV4_DST
        },
        addr,
    );
    if !with_l4 {
        return;
    }
    let l4 = &mut pkt[ihl..];
    match proto {
        proto::TCP => {
            set_u16(
                l4,
                if source {
                    field::SRC_PORT
                } else {
                    field::DST_PORT
                },
                port,
            );
            let c = get_u16(l4, field::TCP_CHECKSUM).unwrap_or(0);
            set_u16(l4, field::TCP_CHECKSUM, l4_delta.apply(c));
        }
        proto::UDP => {
            set_u16(
                l4,
                if source {
                    field::SRC_PORT
                } else {
                    field::DST_PORT
                },
                port,
            );
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
