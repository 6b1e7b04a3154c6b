//! Software segmentation of GSO packets, for the one path the kernel cannot segment: chained
//! frames. They carry the chain ethertype (0x88B5), and a GSO frame with an ethertype the
//! kernel does not know is dropped on transmit (`sendmsg` fails with `ENOMEM`, the error
//! `__dev_queue_xmit` starts from). A chained GSO packet is therefore cut into MTU-sized
//! packets here, each with complete IPv4 and TCP/UDP checksums, the way the kernel's own TSO
//! and UDP GSO cut them: IPv4 identifier incremented per segment; TCP sequence numbers
//! advanced, FIN and PSH on the last segment only, CWR on the first only.

use crate::frame::VnetHdr;
use flowshift_wire::checksum;
use flowshift_wire::packet::proto;

/// `VIRTIO_NET_HDR_GSO_TCPV4`.
const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (UDP GSO: one UDP header per segment).
const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN` (a flag on the GSO type).
const GSO_ECN: u8 = 0x80;
/// Most segments one GSO packet may be cut into (64 KiB of 1-byte segments is no packet).
pub const MAX_SEGMENTS: usize = 128;

/// Why a GSO packet was not segmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// A GSO type other than TCPv4 and UDP (L4).
    #[error("GSO type {0:#x} not supported")]
    Unsupported(u8),
    /// Headers inconsistent with the GSO type, a zero segment size, or too many segments.
    #[error("malformed GSO packet")]
    Malformed,
}

/// Cuts the IPv4 GSO packet `pkt` (as the NAT emits it: IPv4 header first) into segments of
/// at most `vnet.gso_size` payload bytes and hands each to `emit` as a complete IPv4 packet
/// (checksums filled in; sent with no virtio-net offload). A packet that fits one segment is
/// still emitted once, with its checksum completed. Returns the number of segments, or why
/// nothing was emitted (nothing is emitted unless the whole packet can be cut).
pub fn segment(
    pkt: &[u8],
    vnet: VnetHdr,
    mut emit: impl FnMut(Vec<u8>),
) -> Result<usize, SegmentError> {
    let kind = vnet.gso_type & !GSO_ECN;
    let ihl = usize::from(*pkt.first().ok_or(SegmentError::Malformed)? & 0x0f) * 4;
    if pkt.len() < 20 || ihl < 20 || pkt[0] >> 4 != 4 || pkt.len() < ihl + 8 {
        return Err(SegmentError::Malformed);
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let l4 = pkt[9];
    let l4_hlen = match (kind, l4) {
        (GSO_TCPV4, proto::TCP) => {
            let doff = usize::from(*pkt.get(ihl + 12).ok_or(SegmentError::Malformed)? >> 4) * 4;
            if doff < 20 {
                return Err(SegmentError::Malformed);
            }
            doff
        }
        (GSO_UDP_L4, proto::UDP) => 8,
        (GSO_TCPV4 | GSO_UDP_L4, _) => return Err(SegmentError::Malformed),
        _ => return Err(SegmentError::Unsupported(vnet.gso_type)),
    };
    let hdrs = ihl + l4_hlen;
    let mss = usize::from(vnet.gso_size);
    if total != pkt.len() || hdrs > total || mss == 0 {
        return Err(SegmentError::Malformed);
    }
    let payload = &pkt[hdrs..];
    let n = payload.len().div_ceil(mss).max(1);
    if n > MAX_SEGMENTS {
        return Err(SegmentError::Malformed);
    }
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes(pkt[ihl + 4..ihl + 8].try_into().expect("4 bytes"));
    let flags = pkt[ihl + 13];
    for (i, chunk) in payload
        .chunks(mss)
        .chain(payload.is_empty().then_some(&payload[..0]))
        .enumerate()
    {
        let mut s = Vec::with_capacity(hdrs + chunk.len());
        s.extend_from_slice(&pkt[..hdrs]);
        s.extend_from_slice(chunk);
        let len = s.len();
        s[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        s[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        s[10..12].fill(0);
        let ip_sum = checksum::compute(&s[..ihl]);
        s[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let csum_at = if l4 == proto::TCP {
            let off = (i * mss) as u32;
            s[ihl + 4..ihl + 8].copy_from_slice(&seq.wrapping_add(off).to_be_bytes());
            let mut f = flags;
            if i + 1 < n {
                f &= !(0x01 | 0x08); // FIN, PSH: last segment only
            }
            if i > 0 {
                f &= !0x80; // CWR: first segment only
            }
            s[ihl + 13] = f;
            ihl + 16
        } else {
            s[ihl + 4..ihl + 6].copy_from_slice(&((len - ihl) as u16).to_be_bytes());
            ihl + 6
        };
        s[csum_at..csum_at + 2].fill(0);
        let sum = l4_checksum(&s[12..20], l4, &s[ihl..]);
        let sum = if l4 == proto::UDP && sum == 0 {
            0xffff
        } else {
            sum
        };
        s[csum_at..csum_at + 2].copy_from_slice(&sum.to_be_bytes());
        emit(s);
    }
    Ok(n)
}

/// The TCP/UDP checksum of `l4` (its checksum field zero) under the IPv4 pseudo-header of
/// `addrs` (source and destination, 8 bytes) and protocol `l4_proto`.
fn l4_checksum(addrs: &[u8], l4_proto: u8, l4: &[u8]) -> u16 {
    let mut ph = [0u8; 12];
    ph[..8].copy_from_slice(addrs);
    ph[9] = l4_proto;
    ph[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    // `compute` returns the complemented folded sum: undo, add the two sums, fold, complement.
    let sum = u32::from(!checksum::compute(&ph)) + u32::from(!checksum::compute(l4));
    let folded = (sum & 0xffff) + (sum >> 16);
    !(((folded & 0xffff) + (folded >> 16)) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP packet 100.64.0.1:40000 -> 203.0.113.10:5201 with `payload` and TCP `flags`.
    fn tcp(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32];
        p[0] = 0x45;
        p[6] = 0x40; // DF
        p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes());
        p[8] = 64;
        p[9] = proto::TCP;
        p[12..20].copy_from_slice(&[100, 64, 0, 1, 203, 0, 113, 10]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        p[32] = 8 << 4;
        p[33] = flags;
        p.extend_from_slice(payload);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    fn gso(kind: u8, mss: u16) -> VnetHdr {
        VnetHdr {
            flags: 1,
            gso_type: kind,
            hdr_len: 66,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    fn l4_ok(s: &[u8]) -> bool {
        let ihl = usize::from(s[0] & 0x0f) * 4;
        let mut ph = [0u8; 12];
        ph[..8].copy_from_slice(&s[12..20]);
        ph[9] = s[9];
        ph[10..12].copy_from_slice(&((s.len() - ihl) as u16).to_be_bytes());
        let sum = u32::from(!checksum::compute(&ph)) + u32::from(!checksum::compute(&s[ihl..]));
        let f = (sum & 0xffff) + (sum >> 16);
        ((f & 0xffff) + (f >> 16)) as u16 == 0xffff
    }

    #[test]
    fn tcp_gso_is_cut_like_tso() {
        let payload: Vec<u8> = (0..3001u32).map(|i| (i * 7) as u8).collect();
        let pkt = tcp(&payload, 0x80 | 0x10 | 0x08 | 0x01); // CWR ACK PSH FIN
        let mut segs = Vec::new();
        let n = segment(&pkt, gso(GSO_TCPV4 | GSO_ECN, 1448), |s| segs.push(s)).unwrap();
        assert_eq!(n, 3);
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(
                checksum::verify(&s[..20]),
                "IPv4 header checksum of segment {i}"
            );
            assert!(l4_ok(s), "TCP checksum of segment {i}");
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                0xfff0u16.wrapping_add(i as u16)
            );
            let seq = u32::from_be_bytes(s[24..28].try_into().unwrap());
            assert_eq!(seq, 0xffff_ff00u32.wrapping_add(1448 * i as u32));
            let f = s[33];
            assert_eq!(f & 0x80 != 0, i == 0, "CWR on the first only");
            assert_eq!(f & 0x09 != 0, i == 2, "FIN and PSH on the last only");
            assert_ne!(f & 0x10, 0, "ACK on all");
            joined.extend_from_slice(&s[52..]);
        }
        assert_eq!(joined, payload);
        assert!(segs[..2].iter().all(|s| s.len() == 52 + 1448));
    }

    #[test]
    fn udp_gso_gets_one_header_per_segment() {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[8] = 64;
        p[9] = proto::UDP;
        p[12..20].copy_from_slice(&[100, 64, 0, 1, 203, 0, 113, 10]);
        p.extend_from_slice(&[5u8; 2500]);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[24..26].copy_from_slice(&(len - 20).to_be_bytes());
        let mut segs = Vec::new();
        let n = segment(&p, gso(GSO_UDP_L4, 1200), |s| segs.push(s)).unwrap();
        assert_eq!(n, 3);
        for s in &segs {
            assert!(checksum::verify(&s[..20]));
            assert!(l4_ok(s));
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
        }
        assert_eq!(segs[2].len(), 28 + 100);
    }

    #[test]
    fn bad_gso_packets_are_refused_whole() {
        let pkt = tcp(&[1u8; 100], 0x10);
        let mut out = 0;
        assert_eq!(
            segment(&pkt, gso(4, 1448), |_| out += 1),
            Err(SegmentError::Unsupported(4))
        );
        assert_eq!(
            segment(&pkt, gso(GSO_TCPV4, 0), |_| out += 1),
            Err(SegmentError::Malformed)
        );
        assert_eq!(
            segment(&pkt[..60], gso(GSO_TCPV4, 10), |_| out += 1),
            Err(SegmentError::Malformed),
            "total length disagrees"
        );
        assert_eq!(
            segment(&tcp(&[0u8; 2000], 0x10), gso(GSO_TCPV4, 1), |_| out += 1),
            Err(SegmentError::Malformed),
            "too many segments"
        );
        assert_eq!(
            segment(&pkt, gso(GSO_UDP_L4, 1448), |_| out += 1),
            Err(SegmentError::Malformed)
        );
        assert_eq!(out, 0);
        // Fits one segment: emitted once, checksum completed.
        let mut segs = Vec::new();
        assert_eq!(segment(&pkt, gso(GSO_TCPV4, 1448), |s| segs.push(s)), Ok(1));
        assert!(l4_ok(&segs[0]));
    }
}
