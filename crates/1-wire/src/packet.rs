//! Zero-copy IPv4 / TCP / UDP / ICMP header parsing and in-place field access.
//!
//! [`parse_ipv4`] validates everything the NAT relies on before it touches a byte: version,
//! header length, total length against the buffer, header checksum. [`parse_l4`] reads the
//! transport header of an unfragmented packet or a first fragment. Both return
//! [`ParseError`] for malformed input and never panic, whatever the bytes.
//!
//! A buffer may be longer than the IPv4 total length (Ethernet padding); the extra bytes are
//! ignored. Offsets in [`field`] are relative to the start of the IPv4 header (`IPV4_*`) or of
//! the transport header (the others).

/// IANA protocol numbers the NAT understands.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Byte offsets of the fields the NAT reads and rewrites.
pub mod field {
    /// IPv4: time to live.
    pub const IPV4_TTL: usize = 8;
    /// IPv4: header checksum.
    pub const IPV4_CHECKSUM: usize = 10;
    /// IPv4: source address.
    pub const IPV4_SRC: usize = 12;
    /// IPv4: destination address.
    pub const IPV4_DST: usize = 16;
    /// TCP/UDP: source port.
    pub const SRC_PORT: usize = 0;
    /// TCP/UDP: destination port.
    pub const DST_PORT: usize = 2;
    /// TCP: flags byte (CWR ECE URG ACK PSH RST SYN FIN).
    pub const TCP_FLAGS: usize = 13;
    /// TCP: checksum.
    pub const TCP_CHECKSUM: usize = 16;
    /// UDP: checksum.
    pub const UDP_CHECKSUM: usize = 6;
    /// ICMP: checksum.
    pub const ICMP_CHECKSUM: usize = 2;
    /// ICMP query messages: identifier.
    pub const ICMP_IDENT: usize = 4;
}

/// TCP flag bits, as in the flags byte at [`field::TCP_FLAGS`].
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
}

/// Minimum IPv4 header length in bytes.
pub const IPV4_MIN_HEADER: usize = 20;
/// TCP header length without options.
pub const TCP_MIN_HEADER: usize = 20;
/// UDP header length.
pub const UDP_HEADER: usize = 8;
/// ICMP header length (type, code, checksum, 4 bytes of rest-of-header).
pub const ICMP_HEADER: usize = 8;

/// Why a buffer is not a packet the NAT can handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Shorter than a minimal IPv4 header.
    Truncated,
    /// IP version field is not 4.
    NotIpv4,
    /// IHL below 5 or beyond the buffer.
    BadHeaderLength,
    /// Total length below the header length or beyond the buffer.
    BadTotalLength,
    /// IPv4 header checksum does not verify.
    BadIpChecksum,
    /// Transport header shorter than its protocol's minimum.
    L4Truncated,
}

/// The parsed fixed part of an IPv4 header. Addresses are in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Header length in bytes (20 without options).
    pub header_len: usize,
    /// Total length in bytes (header plus payload), at most the buffer length.
    pub total_len: usize,
    /// Protocol number.
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// Identification (for fragments).
    pub ident: u16,
    /// Fragment offset in bytes.
    pub frag_offset: u16,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

impl Ipv4Header {
    /// True for any fragment (first, middle or last).
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }
    /// True for a fragment that does not carry the transport header.
    pub fn is_non_first_fragment(&self) -> bool {
        self.frag_offset != 0
    }
    /// True if the header carries options (IHL > 5).
    pub fn has_options(&self) -> bool {
        self.header_len > IPV4_MIN_HEADER
    }
}

/// Reads a big-endian u16 at `off`; `None` past the end.
#[inline(always)]
pub fn get_u16(buf: &[u8], off: usize) -> Option<u16> {
    let b = buf.get(off..off + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Writes a big-endian u16 at `off`; returns false (and writes nothing) past the end.
#[inline(always)]
pub fn set_u16(buf: &mut [u8], off: usize, value: u16) -> bool {
    match buf.get_mut(off..off + 2) {
        Some(b) => {
            b.copy_from_slice(&value.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Reads 4 bytes (an IPv4 address) at `off`.
#[inline(always)]
pub fn get_addr(buf: &[u8], off: usize) -> Option<[u8; 4]> {
    buf.get(off..off + 4)?.try_into().ok()
}

/// Writes 4 bytes at `off`; returns false past the end.
#[inline(always)]
pub fn set_addr(buf: &mut [u8], off: usize, addr: [u8; 4]) -> bool {
    match buf.get_mut(off..off + 4) {
        Some(b) => {
            b.copy_from_slice(&addr);
            true
        }
        None => false,
    }
}

/// Parses and validates an IPv4 header at the start of `buf`.
///
/// With `verify_checksum` the header checksum must verify. Never panics.
pub fn parse_ipv4(buf: &[u8], verify_checksum: bool) -> Result<Ipv4Header, ParseError> {
    if buf.len() < IPV4_MIN_HEADER {
        return Err(ParseError::Truncated);
    }
    if buf[0] >> 4 != 4 {
        return Err(ParseError::NotIpv4);
    }
    let header_len = ((buf[0] & 0x0f) as usize) * 4;
    if header_len < IPV4_MIN_HEADER || header_len > buf.len() {
        return Err(ParseError::BadHeaderLength);
    }
    let total_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if total_len < header_len || total_len > buf.len() {
        return Err(ParseError::BadTotalLength);
    }
    if verify_checksum && !crate::checksum::verify(&buf[..header_len]) {
        return Err(ParseError::BadIpChecksum);
    }
    let frag = u16::from_be_bytes([buf[6], buf[7]]);
    Ok(Ipv4Header {
        header_len,
        total_len,
        proto: buf[9],
        ttl: buf[8],
        ident: u16::from_be_bytes([buf[4], buf[5]]),
        frag_offset: (frag & 0x1fff) * 8,
        more_fragments: frag & 0x2000 != 0,
        src: [buf[12], buf[13], buf[14], buf[15]],
        dst: [buf[16], buf[17], buf[18], buf[19]],
    })
}

/// ICMP message types the NAT distinguishes (RFC 792, RFC 5508).
pub mod icmp_type {
    /// Echo reply (query).
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (error).
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Source quench (deprecated error, RFC 6633).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Echo request (query).
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded (error).
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem (error).
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Timestamp request (query).
    pub const TIMESTAMP_REQUEST: u8 = 13;
    /// Timestamp reply (query).
    pub const TIMESTAMP_REPLY: u8 = 14;
}

/// What kind of ICMP message this is, as far as the NAT cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    /// A query sent by the querier (echo / timestamp request): may create a mapping outbound.
    QueryRequest,
    /// A reply to a query.
    QueryReply,
    /// An error message carrying the offending packet's headers (RFC 5508 section 4).
    Error,
    /// Anything else (router advertisements, deprecated types, ...).
    Other,
}

/// Classifies an ICMP type.
pub fn icmp_kind(ty: u8) -> IcmpKind {
    use icmp_type::*;
    match ty {
        ECHO_REQUEST | TIMESTAMP_REQUEST => IcmpKind::QueryRequest,
        ECHO_REPLY | TIMESTAMP_REPLY => IcmpKind::QueryReply,
        DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM => IcmpKind::Error,
        _ => IcmpKind::Other,
    }
}

/// The transport header fields the NAT keys on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP ports and flags.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Flags byte.
        flags: u8,
    },
    /// UDP ports.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP header.
    Icmp {
        /// Message type.
        ty: u8,
        /// Message code.
        code: u8,
        /// Identifier (meaningful for queries only).
        ident: u16,
    },
}

/// Parses the transport header at the start of `l4` (the IPv4 payload) for protocol `proto`.
///
/// Returns `Ok(None)` for protocols other than TCP, UDP and ICMP.
pub fn parse_l4(proto: u8, l4: &[u8]) -> Result<Option<L4>, ParseError> {
    match proto {
        proto::TCP => {
            if l4.len() < TCP_MIN_HEADER {
                return Err(ParseError::L4Truncated);
            }
            Ok(Some(L4::Tcp {
                src_port: u16::from_be_bytes([l4[0], l4[1]]),
                dst_port: u16::from_be_bytes([l4[2], l4[3]]),
                flags: l4[field::TCP_FLAGS],
            }))
        }
        proto::UDP => {
            if l4.len() < UDP_HEADER {
                return Err(ParseError::L4Truncated);
            }
            Ok(Some(L4::Udp {
                src_port: u16::from_be_bytes([l4[0], l4[1]]),
                dst_port: u16::from_be_bytes([l4[2], l4[3]]),
            }))
        }
        proto::ICMP => {
            if l4.len() < ICMP_HEADER {
                return Err(ParseError::L4Truncated);
            }
            Ok(Some(L4::Icmp {
                ty: l4[0],
                code: l4[1],
                ident: u16::from_be_bytes([l4[4], l4[5]]),
            }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn udp_packet() -> Vec<u8> {
        let builder =
            etherparse::PacketBuilder::ipv4([100, 64, 0, 1], [198, 18, 0, 1], 64).udp(4000, 53);
        let mut out = Vec::new();
        builder.write(&mut out, b"hello").unwrap();
        out
    }

    #[test]
    fn parses_a_valid_udp_packet() {
        let p = udp_packet();
        let h = parse_ipv4(&p, true).unwrap();
        assert_eq!(
            (h.header_len, h.total_len, h.proto, h.ttl),
            (20, 33, proto::UDP, 64)
        );
        assert_eq!(h.src, [100, 64, 0, 1]);
        let l4 = parse_l4(h.proto, &p[h.header_len..h.total_len]).unwrap();
        assert_eq!(
            l4,
            Some(L4::Udp {
                src_port: 4000,
                dst_port: 53
            })
        );
    }

    #[test]
    fn rejects_each_malformation_with_its_own_error() {
        let p = udp_packet();
        assert_eq!(parse_ipv4(&p[..19], true), Err(ParseError::Truncated));
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(parse_ipv4(&v6, true), Err(ParseError::NotIpv4));
        let mut ihl = p.clone();
        ihl[0] = 0x44;
        assert_eq!(parse_ipv4(&ihl, true), Err(ParseError::BadHeaderLength));
        let mut tl = p.clone();
        tl[3] = 200;
        assert_eq!(parse_ipv4(&tl, false), Err(ParseError::BadTotalLength));
        let mut ck = p.clone();
        ck[10] ^= 0xff;
        assert_eq!(parse_ipv4(&ck, true), Err(ParseError::BadIpChecksum));
        assert_eq!(
            parse_l4(proto::UDP, &p[20..27]),
            Err(ParseError::L4Truncated)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(h) = parse_ipv4(&bytes, false) {
                let _ = parse_l4(h.proto, &bytes[h.header_len..h.total_len]);
            }
        }
    }
}
