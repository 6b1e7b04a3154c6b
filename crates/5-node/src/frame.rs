//! Frames between the switch and the node: classification, the virtio-net header, the
//! per-packet offload tag that carries it across the NAT, and partial-checksum repair.
//!
//! **Ingress.** A frame is Ethernet II. Ethertype 0x0800 from anyone is a switch packet
//! ([`Class::Switch`], the IPv4 packet starts at byte 14); ethertype 0x88B5 from a peer's MAC is
//! a chained, untranslated packet ([`Class::Chain`]); 0x88B5 from an unknown MAC is refused
//! ([`Class::UnknownPeer`]), any other ethertype too ([`Class::NotIpv4`]).
//!
//! **The offload tag.** The migration [`Instance`](flowshift_migration::Instance) takes packets
//! as `Vec<u8>` starting at the IPv4 header, each with a driver-defined tag it hands back
//! unchanged with the packet, however much later (held, chained, re-processed, dropped).
//! [`ingest`] copies exactly `total_length` bytes and returns the packet's [`Offload`] tag:
//! the frame's virtio-net header, the original addresses and the original checksum field.
//! [`finish`] takes the tag back when the packet leaves and returns the header to send it with
//! (GSO type and size preserved). A packet whose length fields are inconsistent is copied whole
//! with [`Offload::NONE`]: the NAT drops it (counted under its own reasons).
//!
//! **Partial checksums.** With `VIRTIO_NET_HDR_F_NEEDS_CSUM` the L4 checksum field holds the
//! folded pseudo-header sum `P` (not complemented); whoever transmits completes it over the L4
//! bytes. The NAT's incremental update treats the field as a complemented checksum, which is
//! wrong for such a seed (it subtracts where the seed needs an addition, and it includes port
//! changes the device will sum anyway). [`finish`] therefore rewrites the field from the
//! original seed: `P' = P + (new addresses - old addresses)` for TCP and UDP (whose checksums
//! cover a pseudo-header), `P' = P` otherwise: RFC 1624 arithmetic on four words, never a sum
//! over the payload.

use crate::config::MacAddr;
use flowshift_migration::InstanceId;
use flowshift_wire::checksum::Delta;
use flowshift_wire::packet::proto;

/// Ethernet II header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 ethertype.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of chained frames between nodes (IEEE local experimental 1).
pub const ETHERTYPE_CHAIN: u16 = 0x88B5;
/// Length of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial (see the module docs).
pub const VNET_F_NEEDS_CSUM: u8 = 1;

/// A packet's offload data, carried beside it through the instance as its tag: what
/// [`finish`] needs to send the translated packet with the right virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// The received frame's virtio-net header.
    pub vnet: VnetHdr,
    /// The IPv4 source and destination addresses as received (bytes 12..20).
    pub addrs: [u8; 8],
    /// With `NEEDS_CSUM`: the L4 checksum field as received (the pseudo-header seed).
    pub seed: u16,
}

impl Offload {
    /// No offload: sent with the default header, checksum untouched.
    pub const NONE: Offload = Offload {
        vnet: VnetHdr {
            flags: 0,
            gso_type: 0,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 0,
            csum_offset: 0,
        },
        addrs: [0; 8],
        seed: 0,
    };
}

/// `struct virtio_net_hdr` (host byte order, as AF_PACKET exchanges it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` (0: not a GSO frame).
    pub gso_type: u8,
    /// Length of the headers (a hint).
    pub hdr_len: u16,
    /// Segment payload size of a GSO frame.
    pub gso_size: u16,
    /// With `NEEDS_CSUM`: where checksumming starts, from the start of the Ethernet frame.
    pub csum_start: u16,
    /// With `NEEDS_CSUM`: offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header (`b` at least [`VNET_HDR_LEN`] bytes).
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let w = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: w(2),
            gso_size: w(4),
            csum_start: w(6),
            csum_offset: w(8),
        }
    }

    /// The wire form.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// True if the L4 checksum is partial.
    pub fn needs_csum(self) -> bool {
        self.flags & VNET_F_NEEDS_CSUM != 0
    }
}

/// What a received frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// IPv4 from the switch.
    Switch,
    /// Chained by a peer.
    Chain(InstanceId),
    /// Chain ethertype from a MAC that is not a peer's.
    UnknownPeer,
    /// Another ethertype (ARP, IPv6, LLDP, ...).
    NotIpv4,
    /// Shorter than an Ethernet header.
    Runt,
}

/// The peers' MACs, for classification and for addressing chained frames.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    list: Vec<(MacAddr, InstanceId)>,
}

impl Peers {
    /// From (MAC, id) pairs.
    pub fn new(list: Vec<(MacAddr, InstanceId)>) -> Peers {
        Peers { list }
    }

    /// The peer with this MAC.
    pub fn by_mac(&self, mac: &[u8]) -> Option<InstanceId> {
        self.list
            .iter()
            .find(|(m, _)| m.0[..] == *mac)
            .map(|&(_, id)| id)
    }

    /// The MAC of a peer.
    pub fn mac_of(&self, id: InstanceId) -> Option<MacAddr> {
        self.list.iter().find(|&&(_, i)| i == id).map(|&(m, _)| m)
    }
}

/// Classifies an Ethernet frame (see the module docs).
pub fn classify(frame: &[u8], peers: &Peers) -> Class {
    if frame.len() < ETH_HLEN {
        return Class::Runt;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETHERTYPE_IPV4 => Class::Switch,
        ETHERTYPE_CHAIN => match peers.by_mac(&frame[6..12]) {
            Some(id) => Class::Chain(id),
            None => Class::UnknownPeer,
        },
        _ => Class::NotIpv4,
    }
}

/// An Ethernet II header.
pub fn eth_header(dst: MacAddr, src: MacAddr, ethertype: u16) -> [u8; ETH_HLEN] {
    let mut h = [0u8; ETH_HLEN];
    h[..6].copy_from_slice(&dst.0);
    h[6..12].copy_from_slice(&src.0);
    h[12..].copy_from_slice(&ethertype.to_be_bytes());
    h
}

/// Why [`ingest`] refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestError {
    /// `NEEDS_CSUM` with a checksum field outside the packet's L4 part.
    BadVnetHdr,
}

/// Copies the IPv4 packet `ip` (the frame from byte 14) into `buf` for the instance and
/// returns its offload tag (see the module docs). `vnet` is the frame's virtio-net header, or
/// the default one when the socket does not exchange headers.
pub fn ingest(ip: &[u8], vnet: VnetHdr, buf: &mut Vec<u8>) -> Result<Offload, IngestError> {
    buf.clear();
    let total = match ip {
        [b0, _, t0, t1, ..] if b0 >> 4 == 4 && ip.len() >= 20 => {
            usize::from(u16::from_be_bytes([*t0, *t1]))
        }
        _ => 0,
    };
    if total < 20 || total > ip.len() {
        // Inconsistent: the NAT drops it and counts why.
        buf.extend_from_slice(ip);
        return Ok(Offload::NONE);
    }
    let mut seed = 0u16;
    if vnet.needs_csum() {
        let at = csum_field(vnet).ok_or(IngestError::BadVnetHdr)?;
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if usize::from(vnet.csum_start) < ETH_HLEN + ihl || at + 2 > total {
            return Err(IngestError::BadVnetHdr);
        }
        seed = u16::from_be_bytes([ip[at], ip[at + 1]]);
    }
    buf.extend_from_slice(&ip[..total]);
    let mut addrs = [0u8; 8];
    addrs.copy_from_slice(&ip[12..20]);
    Ok(Offload { vnet, addrs, seed })
}

/// Offset of the checksum field from the start of the IPv4 packet.
fn csum_field(vnet: VnetHdr) -> Option<usize> {
    (usize::from(vnet.csum_start) + usize::from(vnet.csum_offset)).checked_sub(ETH_HLEN)
}

/// Repairs a partial checksum of a packet the instance emitted, from its offload tag, and
/// returns the virtio-net header to send it with. `pkt` holds exactly the IPv4 packet.
pub fn finish(pkt: &mut [u8], tag: Offload) -> VnetHdr {
    let vnet = tag.vnet;
    if vnet.needs_csum()
        && let Some(at) = csum_field(vnet)
        && at + 2 <= pkt.len()
        && pkt.len() >= 20
    {
        let fixed = if matches!(pkt[9], proto::TCP | proto::UDP) {
            let old = tag.addrs;
            let d = Delta::NONE
                .replace_addr(
                    old[..4].try_into().expect("4"),
                    pkt[12..16].try_into().expect("4"),
                )
                .replace_addr(
                    old[4..].try_into().expect("4"),
                    pkt[16..20].try_into().expect("4"),
                );
            // The seed is an uncomplemented sum: P + d = ~(~P - d) = !d.apply(!P).
            !d.apply(!tag.seed)
        } else {
            tag.seed
        };
        pkt[at..at + 2].copy_from_slice(&fixed.to_be_bytes());
    }
    VnetHdr {
        flags: vnet.flags & VNET_F_NEEDS_CSUM,
        hdr_len: if vnet.gso_type != 0 {
            gso_header_len(pkt).unwrap_or(vnet.hdr_len)
        } else {
            vnet.hdr_len
        },
        ..vnet
    }
}

/// Length of the Ethernet, IPv4 and TCP or UDP headers of a GSO packet (`pkt` starts at the
/// IPv4 header), clamped to the frame: the `hdr_len` a GSO frame is sent with. AF_PACKET
/// puts `hdr_len` bytes in the socket buffer's linear part and the rest in pages; with 0 it
/// makes the whole frame linear, an order-4 allocation for 64 KiB that fails with `ENOMEM`
/// once memory is fragmented (seen on the testbed: chained GSO frames refused).
fn gso_header_len(pkt: &[u8]) -> Option<u16> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    let l4 = match *pkt.get(9)? {
        proto::TCP => usize::from(*pkt.get(ihl + 12)? >> 4) * 4,
        proto::UDP => 8,
        _ => return None,
    };
    let len = (ETH_HLEN + ihl + l4).min(ETH_HLEN + pkt.len());
    u16::try_from(len).ok()
}

/// Longest header a [`TxFrame`] carries: virtio-net header plus Ethernet header.
pub const TX_HEAD_MAX: usize = VNET_HDR_LEN + ETH_HLEN;

/// A frame ready to send: a header (`[virtio-net header] + Ethernet header`) and the IPv4
/// packet, sent as two iovecs.
#[derive(Debug)]
pub struct TxFrame {
    head: [u8; TX_HEAD_MAX],
    head_len: u8,
    /// The IPv4 packet.
    pub pkt: Vec<u8>,
}

impl TxFrame {
    /// A frame of `pkt` behind `eth`, with `vnet` in front when the socket exchanges headers.
    pub fn new(vnet: Option<VnetHdr>, eth: [u8; ETH_HLEN], pkt: Vec<u8>) -> TxFrame {
        let mut head = [0u8; TX_HEAD_MAX];
        let head_len = match vnet {
            Some(v) => {
                head[..VNET_HDR_LEN].copy_from_slice(&v.to_bytes());
                head[VNET_HDR_LEN..].copy_from_slice(&eth);
                TX_HEAD_MAX
            }
            None => {
                head[..ETH_HLEN].copy_from_slice(&eth);
                ETH_HLEN
            }
        };
        TxFrame {
            head,
            head_len: head_len as u8,
            pkt,
        }
    }

    /// The header bytes.
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// Bytes on the wire (Ethernet header and packet; the virtio-net header is not sent).
    pub fn wire_len(&self) -> usize {
        ETH_HLEN + self.pkt.len()
    }
}

/// A received frame as the ring shows it.
#[derive(Clone, Copy, Debug)]
pub struct RxFrame<'a> {
    /// The Ethernet frame (as much of it as was captured).
    pub data: &'a [u8],
    /// Its virtio-net header, when the socket exchanges headers.
    pub vnet: Option<VnetHdr>,
    /// The ring cut the frame short (`tp_snaplen < tp_len`).
    pub truncated: bool,
    /// The frame carried a VLAN tag (stripped into the ring's metadata).
    pub vlan: bool,
    /// A frame this host sent (`PACKET_OUTGOING`).
    pub outgoing: bool,
    /// The kernel had not completed its checksum (`TP_STATUS_CSUMNOTREADY`).
    pub csum_not_ready: bool,
    /// When the kernel received it: `CLOCK_REALTIME` ns from the ring (0: not stamped).
    pub stamp_ns: u64,
}

impl<'a> RxFrame<'a> {
    /// A complete, incoming frame without metadata (tests, injected frames).
    pub fn plain(data: &'a [u8], vnet: Option<VnetHdr>) -> RxFrame<'a> {
        RxFrame {
            data,
            vnet,
            truncated: false,
            vlan: false,
            outgoing: false,
            csum_not_ready: false,
            stamp_ns: 0,
        }
    }
}

/// Where the packet thread sends frames (the AF_PACKET socket, or a capture in tests).
pub trait FrameSink {
    /// Sends frames from the start of `frames`; returns how many were taken (0 if the socket
    /// is full right now). An error means the first frame was refused.
    fn send(&mut self, frames: &[TxFrame]) -> std::io::Result<usize>;
    /// Waits up to `timeout` until sending may succeed again.
    fn wait_writable(&mut self, timeout: std::time::Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Peers {
        Peers::new(vec![(MacAddr([2, 0xf5, 0, 0, 0, 2]), InstanceId(2))])
    }

    fn frame(src: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = eth_header(MacAddr([2, 0xf5, 0, 0, 0, 1]), MacAddr(src), ethertype).to_vec();
        f.extend_from_slice(&[0x45; 20]);
        f
    }

    #[test]
    fn classifies_switch_chain_and_others() {
        let p = peers();
        assert_eq!(classify(&frame([9; 6], 0x0800), &p), Class::Switch);
        assert_eq!(
            classify(&frame([2, 0xf5, 0, 0, 0, 2], 0x88B5), &p),
            Class::Chain(InstanceId(2))
        );
        assert_eq!(
            classify(&frame([2, 0xf5, 0, 0, 0, 3], 0x88B5), &p),
            Class::UnknownPeer
        );
        assert_eq!(classify(&frame([9; 6], 0x0806), &p), Class::NotIpv4);
        assert_eq!(classify(&frame([9; 6], 0x86dd), &p), Class::NotIpv4);
        assert_eq!(classify(&[0u8; 13], &p), Class::Runt);
        assert_eq!(
            p.mac_of(InstanceId(2)),
            Some(MacAddr([2, 0xf5, 0, 0, 0, 2]))
        );
        assert_eq!(p.mac_of(InstanceId(3)), None);
    }

    #[test]
    fn gso_frames_are_sent_with_their_header_length() {
        // A TCP GSO packet (IHL 5, data offset 8: 32-byte TCP header) received with hdr_len 0.
        let mut ip = vec![0u8; 3000];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&3000u16.to_be_bytes());
        ip[9] = 6;
        ip[32] = 8 << 4;
        let gso = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: 1,
            hdr_len: 0,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut buf = Vec::new();
        let tag = ingest(&ip, gso, &mut buf).unwrap();
        assert_eq!(finish(&mut buf, tag).hdr_len, 14 + 20 + 32);
        // Not GSO: the received hint is kept.
        let tag = ingest(&ip, VnetHdr { gso_type: 0, ..gso }, &mut buf).unwrap();
        assert_eq!(finish(&mut buf, tag).hdr_len, 0);
    }

    #[test]
    fn vnet_header_round_trips() {
        let v = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::from_bytes(&v.to_bytes()), v);
    }

    #[test]
    fn ingest_strips_padding_and_tags_the_packet() {
        let mut ip = vec![0u8; 40];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[9] = 17;
        ip[12..20].copy_from_slice(&[100, 64, 0, 1, 198, 18, 0, 1]);
        let mut buf = Vec::new();
        let tag = ingest(&ip, VnetHdr::default(), &mut buf).unwrap();
        assert_eq!(buf, ip[..28]);
        assert_eq!(tag.addrs, [100, 64, 0, 1, 198, 18, 0, 1]);
        assert_eq!(finish(&mut buf, tag), VnetHdr::default());
        assert_eq!(buf, ip[..28]);
        // Inconsistent total length: copied whole, no offload.
        ip[2..4].copy_from_slice(&60u16.to_be_bytes());
        let tag = ingest(&ip, VnetHdr::default(), &mut buf).unwrap();
        assert_eq!(tag, Offload::NONE);
        assert_eq!(buf, ip);
        assert_eq!(finish(&mut buf, tag), VnetHdr::default());
        assert_eq!(buf, ip);
    }

    #[test]
    fn finish_moves_a_partial_checksum_seed_by_the_address_change() {
        // A UDP packet with a partial checksum: the field holds the folded pseudo-header sum.
        let mut ip = vec![0u8; 28];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[9] = 17;
        ip[12..20].copy_from_slice(&[100, 64, 0, 1, 198, 18, 0, 1]);
        let seed = |p: &[u8]| {
            let mut s = 0u32;
            for w in p[12..20].chunks(2) {
                s += u32::from(u16::from_be_bytes([w[0], w[1]]));
            }
            s += 17 + 8;
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        };
        let p0 = seed(&ip);
        ip[26..28].copy_from_slice(&p0.to_be_bytes());
        let v = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            csum_start: (ETH_HLEN + 20) as u16,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let mut buf = Vec::new();
        let tag = ingest(&ip, v, &mut buf).unwrap();
        assert_eq!(tag.seed, p0);
        // The NAT rewrites the source address (its own checksum update is then repaired).
        buf[12..16].copy_from_slice(&[203, 0, 113, 1]);
        assert_eq!(finish(&mut buf, tag), v);
        let field = u16::from_be_bytes([buf[26], buf[27]]);
        assert_eq!(field, seed(&buf), "seed of the translated pseudo-header");
    }

    #[test]
    fn partial_checksum_field_outside_the_packet_is_refused() {
        let mut ip = vec![0u8; 40];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[9] = 6;
        let v = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 30,
            ..VnetHdr::default()
        };
        assert_eq!(
            ingest(&ip, v, &mut Vec::new()),
            Err(IngestError::BadVnetHdr)
        );
        let v = VnetHdr {
            csum_start: 20,
            csum_offset: 0,
            ..v
        };
        assert_eq!(
            ingest(&ip, v, &mut Vec::new()),
            Err(IngestError::BadVnetHdr)
        );
    }
}
