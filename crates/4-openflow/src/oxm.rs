//! Flow matches as OXM TLVs (OpenFlow 1.3 §7.2.3) and the OXM payloads of SET_FIELD actions.
//!
//! [`Match`] models the fields a NAT-steering controller uses; any other OXM TLV survives a
//! decode/encode round trip in [`Match::other`] as a raw [`OxmTlv`].

use core::net::Ipv4Addr;

use crate::buf::{Reader, pad_to_8, patch_len, put_u16};
use crate::error::{DecodeError, EncodeError};

/// The OXM class of the standard OpenFlow fields (OFPXMC_OPENFLOW_BASIC).
pub const OXM_CLASS_OPENFLOW_BASIC: u16 = 0x8000;

/// OXM field numbers of class [`OXM_CLASS_OPENFLOW_BASIC`] (OFPXMT_OFB_*) that [`Match`] and
/// [`SetField`] model.
pub mod oxm_field {
    /// Switch input port (u32).
    pub const IN_PORT: u8 = 0;
    /// Ethernet destination address (6 bytes, maskable).
    pub const ETH_DST: u8 = 3;
    /// Ethernet source address (6 bytes, maskable).
    pub const ETH_SRC: u8 = 4;
    /// Ethernet type (u16).
    pub const ETH_TYPE: u8 = 5;
    /// IP protocol number (u8); needs ETH_TYPE 0x0800 or 0x86dd.
    pub const IP_PROTO: u8 = 10;
    /// IPv4 source address (maskable); needs ETH_TYPE 0x0800.
    pub const IPV4_SRC: u8 = 11;
    /// IPv4 destination address (maskable); needs ETH_TYPE 0x0800.
    pub const IPV4_DST: u8 = 12;
    /// TCP source port; needs IP_PROTO 6.
    pub const TCP_SRC: u8 = 13;
    /// TCP destination port; needs IP_PROTO 6.
    pub const TCP_DST: u8 = 14;
    /// UDP source port; needs IP_PROTO 17.
    pub const UDP_SRC: u8 = 15;
    /// UDP destination port; needs IP_PROTO 17.
    pub const UDP_DST: u8 = 16;
}

/// Ethernet type of IPv4.
pub const ETH_TYPE_IPV4: u16 = 0x0800;
/// IP protocol number of TCP.
pub const IP_PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IP_PROTO_UDP: u8 = 17;

/// A raw OXM TLV: a field this crate does not model, kept verbatim.
///
/// `payload` holds the value followed by the mask when `has_mask` is set; it is at most 255
/// bytes. `field` uses 7 bits; the top bit is ignored on encode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OxmTlv {
    /// OXM class (0x8000 for the standard fields, 0xffff for experimenter fields).
    pub class: u16,
    /// Field number within the class (7 bits).
    pub field: u8,
    /// Whether `payload` carries a mask after the value.
    pub has_mask: bool,
    /// Value (and mask) bytes.
    pub payload: Vec<u8>,
}

/// A value with an optional bit mask: bits where the mask is 0 are wildcarded.
///
/// OpenFlow requires value bits under a 0 mask bit to be 0; the constructors ensure that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Masked<T> {
    /// The value to match.
    pub value: T,
    /// The mask; `None` means an exact match.
    pub mask: Option<T>,
}

impl<T> Masked<T> {
    /// An exact match on `value`.
    pub const fn exact(value: T) -> Self {
        Masked { value, mask: None }
    }
}

impl Masked<Ipv4Addr> {
    /// Matches the prefix `addr/prefix_len`; host bits of `addr` are cleared, a prefix length of
    /// 32 or more yields an exact match, and 0 a match-anything mask.
    pub fn ipv4_prefix(addr: Ipv4Addr, prefix_len: u8) -> Self {
        if prefix_len >= 32 {
            return Masked::exact(addr);
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        Masked {
            value: Ipv4Addr::from(u32::from(addr) & mask),
            mask: Some(Ipv4Addr::from(mask)),
        }
    }

    /// The prefix length when the mask is contiguous (32 for an exact match), else `None`.
    pub fn prefix_len(&self) -> Option<u8> {
        let Some(mask) = self.mask else {
            return Some(32);
        };
        let m = u32::from(mask);
        let len = m.leading_ones();
        (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
    }

    /// Whether `addr` falls under this masked value.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = self.mask.map_or(u32::MAX, u32::from);
        u32::from(addr) & mask == u32::from(self.value) & mask
    }
}

impl Masked<[u8; 6]> {
    /// A masked Ethernet address; value bits under a 0 mask bit are cleared.
    pub fn mac_masked(value: [u8; 6], mask: [u8; 6]) -> Self {
        let mut v = value;
        for (b, m) in v.iter_mut().zip(mask) {
            *b &= m;
        }
        Masked {
            value: v,
            mask: Some(mask),
        }
    }
}

/// A flow match (ofp_match of type OFPMT_OXM). `None` fields are wildcarded; the default value
/// matches every packet.
///
/// Prerequisites are not added implicitly (a switch rejects `ipv4_src` without
/// `eth_type = 0x0800` with OFPBMC_BAD_PREREQ); [`Match::with_prerequisites`] fills them in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Match {
    /// Ingress OpenFlow port number.
    pub in_port: Option<u32>,
    /// Ethernet destination.
    pub eth_dst: Option<Masked<[u8; 6]>>,
    /// Ethernet source.
    pub eth_src: Option<Masked<[u8; 6]>>,
    /// Ethernet type, e.g. [`ETH_TYPE_IPV4`].
    pub eth_type: Option<u16>,
    /// IP protocol number.
    pub ip_proto: Option<u8>,
    /// IPv4 source, optionally masked (see [`Masked::ipv4_prefix`]).
    pub ipv4_src: Option<Masked<Ipv4Addr>>,
    /// IPv4 destination, optionally masked.
    pub ipv4_dst: Option<Masked<Ipv4Addr>>,
    /// TCP source port.
    pub tcp_src: Option<u16>,
    /// TCP destination port.
    pub tcp_dst: Option<u16>,
    /// UDP source port.
    pub udp_src: Option<u16>,
    /// UDP destination port.
    pub udp_dst: Option<u16>,
    /// OXM TLVs not modelled above, in wire order; encoded after the modelled fields. They must
    /// not duplicate a modelled field.
    pub other: Vec<OxmTlv>,
}

impl Match {
    /// Sets unset prerequisite fields: `eth_type` 0x0800 when an IPv4 field or `ip_proto` is
    /// set, and `ip_proto` 6 or 17 when a TCP or UDP port is set.
    pub fn with_prerequisites(mut self) -> Self {
        if self.ip_proto.is_none() {
            if self.tcp_src.is_some() || self.tcp_dst.is_some() {
                self.ip_proto = Some(IP_PROTO_TCP);
            } else if self.udp_src.is_some() || self.udp_dst.is_some() {
                self.ip_proto = Some(IP_PROTO_UDP);
            }
        }
        let l3 = self.ip_proto.is_some() || self.ipv4_src.is_some() || self.ipv4_dst.is_some();
        if l3 && self.eth_type.is_none() {
            self.eth_type = Some(ETH_TYPE_IPV4);
        }
        self
    }

    /// Whether every field is wildcarded.
    pub fn is_empty(&self) -> bool {
        *self == Match::default()
    }
}

/// The field a SET_FIELD action rewrites.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SetField {
    /// Ethernet destination.
    EthDst([u8; 6]),
    /// Ethernet source.
    EthSrc([u8; 6]),
    /// IPv4 source (the switch fixes the checksums).
    Ipv4Src(Ipv4Addr),
    /// IPv4 destination.
    Ipv4Dst(Ipv4Addr),
    /// TCP source port.
    TcpSrc(u16),
    /// TCP destination port.
    TcpDst(u16),
    /// UDP source port.
    UdpSrc(u16),
    /// UDP destination port.
    UdpDst(u16),
    /// Any other OXM TLV (without a mask, per the specification).
    Other(OxmTlv),
}

fn put_oxm_header(
    out: &mut Vec<u8>,
    class: u16,
    field: u8,
    has_mask: bool,
    len: usize,
) -> Result<(), EncodeError> {
    let len = u8::try_from(len).map_err(|_| EncodeError::OxmTooLong { len })?;
    put_u16(out, class);
    out.push(((field & 0x7f) << 1) | u8::from(has_mask));
    out.push(len);
    Ok(())
}

fn put_basic(
    out: &mut Vec<u8>,
    field: u8,
    value: &[u8],
    mask: Option<&[u8]>,
) -> Result<(), EncodeError> {
    let len = value.len() + mask.map_or(0, <[u8]>::len);
    put_oxm_header(out, OXM_CLASS_OPENFLOW_BASIC, field, mask.is_some(), len)?;
    out.extend_from_slice(value);
    if let Some(m) = mask {
        out.extend_from_slice(m);
    }
    Ok(())
}

fn put_tlv(out: &mut Vec<u8>, tlv: &OxmTlv) -> Result<(), EncodeError> {
    put_oxm_header(out, tlv.class, tlv.field, tlv.has_mask, tlv.payload.len())?;
    out.extend_from_slice(&tlv.payload);
    Ok(())
}

/// Appends `m` as an ofp_match (type OXM), zero-padded to a multiple of 8 bytes.
pub(crate) fn encode_match(m: &Match, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    const OFPMT_OXM: u16 = 1;
    let start = out.len();
    put_u16(out, OFPMT_OXM);
    put_u16(out, 0); // length, patched below (excludes the padding)
    use oxm_field as f;
    if let Some(p) = m.in_port {
        put_basic(out, f::IN_PORT, &p.to_be_bytes(), None)?;
    }
    if let Some(e) = &m.eth_dst {
        put_basic(out, f::ETH_DST, &e.value, e.mask.as_ref().map(|m| &m[..]))?;
    }
    if let Some(e) = &m.eth_src {
        put_basic(out, f::ETH_SRC, &e.value, e.mask.as_ref().map(|m| &m[..]))?;
    }
    if let Some(t) = m.eth_type {
        put_basic(out, f::ETH_TYPE, &t.to_be_bytes(), None)?;
    }
    if let Some(p) = m.ip_proto {
        put_basic(out, f::IP_PROTO, &[p], None)?;
    }
    for (field, v) in [(f::IPV4_SRC, &m.ipv4_src), (f::IPV4_DST, &m.ipv4_dst)] {
        if let Some(a) = v {
            let mask = a.mask.map(|m| m.octets());
            put_basic(out, field, &a.value.octets(), mask.as_ref().map(|m| &m[..]))?;
        }
    }
    for (field, v) in [
        (f::TCP_SRC, m.tcp_src),
        (f::TCP_DST, m.tcp_dst),
        (f::UDP_SRC, m.udp_src),
        (f::UDP_DST, m.udp_dst),
    ] {
        if let Some(port) = v {
            put_basic(out, field, &port.to_be_bytes(), None)?;
        }
    }
    for tlv in &m.other {
        put_tlv(out, tlv)?;
    }
    patch_len(out, start + 2, start);
    pad_to_8(out, start);
    Ok(())
}

/// Reads one OXM TLV.
fn decode_tlv(r: &mut Reader<'_>) -> Result<OxmTlv, DecodeError> {
    let class = r.u16("OXM header")?;
    let fh = r.u8("OXM header")?;
    let len = r.u8("OXM header")?;
    let payload = r.bytes(usize::from(len), "OXM payload")?.to_vec();
    Ok(OxmTlv {
        class,
        field: fh >> 1,
        has_mask: fh & 1 == 1,
        payload,
    })
}

fn fixed<const N: usize>(p: &[u8]) -> Option<[u8; N]> {
    p.try_into().ok()
}

/// Splits a payload of exactly `2 * N` bytes into value and mask.
fn value_mask<const N: usize>(p: &[u8]) -> Option<([u8; N], [u8; N])> {
    if p.len() != 2 * N {
        return None;
    }
    let (v, m) = p.split_at(N);
    Some((fixed(v)?, fixed(m)?))
}

fn masked<const N: usize>(tlv: &OxmTlv) -> Option<Masked<[u8; N]>> {
    if tlv.has_mask {
        value_mask::<N>(&tlv.payload).map(|(value, mask)| Masked {
            value,
            mask: Some(mask),
        })
    } else {
        fixed::<N>(&tlv.payload).map(Masked::exact)
    }
}

fn exact<const N: usize>(tlv: &OxmTlv) -> Option<[u8; N]> {
    if tlv.has_mask {
        None
    } else {
        fixed(&tlv.payload)
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T, field: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateField { field });
    }
    *slot = Some(v);
    Ok(())
}

/// Stores `tlv` in its typed slot of `m`, or returns it when it does not fit one (unknown field,
/// unexpected length, or a mask on a field this crate models as exact).
fn place(m: &mut Match, tlv: OxmTlv) -> Result<Option<OxmTlv>, DecodeError> {
    use oxm_field as f;
    if tlv.class != OXM_CLASS_OPENFLOW_BASIC {
        return Ok(Some(tlv));
    }
    let field = tlv.field;
    let u16_port = |t: &OxmTlv| exact::<2>(t).map(u16::from_be_bytes);
    let ipv4 = |t: &OxmTlv| {
        masked::<4>(t).map(|a| Masked {
            value: Ipv4Addr::from(a.value),
            mask: a.mask.map(Ipv4Addr::from),
        })
    };
    let placed = match field {
        f::IN_PORT => {
            exact::<4>(&tlv).map(|v| set_once(&mut m.in_port, u32::from_be_bytes(v), field))
        }
        f::ETH_DST => masked::<6>(&tlv).map(|v| set_once(&mut m.eth_dst, v, field)),
        f::ETH_SRC => masked::<6>(&tlv).map(|v| set_once(&mut m.eth_src, v, field)),
        f::ETH_TYPE => u16_port(&tlv).map(|v| set_once(&mut m.eth_type, v, field)),
        f::IP_PROTO => exact::<1>(&tlv).map(|[v]| set_once(&mut m.ip_proto, v, field)),
        f::IPV4_SRC => ipv4(&tlv).map(|v| set_once(&mut m.ipv4_src, v, field)),
        f::IPV4_DST => ipv4(&tlv).map(|v| set_once(&mut m.ipv4_dst, v, field)),
        f::TCP_SRC => u16_port(&tlv).map(|v| set_once(&mut m.tcp_src, v, field)),
        f::TCP_DST => u16_port(&tlv).map(|v| set_once(&mut m.tcp_dst, v, field)),
        f::UDP_SRC => u16_port(&tlv).map(|v| set_once(&mut m.udp_src, v, field)),
        f::UDP_DST => u16_port(&tlv).map(|v| set_once(&mut m.udp_dst, v, field)),
        _ => None,
    };
    match placed {
        Some(res) => res.map(|()| None),
        None => Ok(Some(tlv)),
    }
}

/// Reads an ofp_match including its padding.
pub(crate) fn decode_match(r: &mut Reader<'_>) -> Result<Match, DecodeError> {
    let mtype = r.peek_u16(0, "match header")?;
    let len = usize::from(r.peek_u16(2, "match header")?);
    if mtype != 1 {
        return Err(DecodeError::BadValue {
            what: "match type (only OXM = 1)",
            value: mtype.into(),
        });
    }
    if len < 4 {
        return Err(DecodeError::BadLength { what: "match", len });
    }
    let mut body = r.sub(len, "match")?;
    body.skip(4, "match header")?;
    r.skip(crate::buf::pad8(len), "match padding")?;
    let mut m = Match::default();
    while !body.is_empty() {
        let tlv = decode_tlv(&mut body)?;
        if let Some(unplaced) = place(&mut m, tlv)? {
            m.other.push(unplaced);
        }
    }
    Ok(m)
}

/// Appends the OXM TLV of a SET_FIELD action (without the action header or padding).
pub(crate) fn encode_set_field(sf: &SetField, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    use oxm_field as f;
    match sf {
        SetField::EthDst(a) => put_basic(out, f::ETH_DST, a, None),
        SetField::EthSrc(a) => put_basic(out, f::ETH_SRC, a, None),
        SetField::Ipv4Src(a) => put_basic(out, f::IPV4_SRC, &a.octets(), None),
        SetField::Ipv4Dst(a) => put_basic(out, f::IPV4_DST, &a.octets(), None),
        SetField::TcpSrc(p) => put_basic(out, f::TCP_SRC, &p.to_be_bytes(), None),
        SetField::TcpDst(p) => put_basic(out, f::TCP_DST, &p.to_be_bytes(), None),
        SetField::UdpSrc(p) => put_basic(out, f::UDP_SRC, &p.to_be_bytes(), None),
        SetField::UdpDst(p) => put_basic(out, f::UDP_DST, &p.to_be_bytes(), None),
        SetField::Other(tlv) => put_tlv(out, tlv),
    }
}

/// Reads the OXM TLV of a SET_FIELD action; fields not modelled become [`SetField::Other`].
pub(crate) fn decode_set_field(r: &mut Reader<'_>) -> Result<SetField, DecodeError> {
    use oxm_field as f;
    let tlv = decode_tlv(r)?;
    if tlv.class != OXM_CLASS_OPENFLOW_BASIC {
        return Ok(SetField::Other(tlv));
    }
    let sf = match tlv.field {
        f::ETH_DST => exact::<6>(&tlv).map(SetField::EthDst),
        f::ETH_SRC => exact::<6>(&tlv).map(SetField::EthSrc),
        f::IPV4_SRC => exact::<4>(&tlv).map(|a| SetField::Ipv4Src(a.into())),
        f::IPV4_DST => exact::<4>(&tlv).map(|a| SetField::Ipv4Dst(a.into())),
        f::TCP_SRC => exact::<2>(&tlv).map(|p| SetField::TcpSrc(u16::from_be_bytes(p))),
        f::TCP_DST => exact::<2>(&tlv).map(|p| SetField::TcpDst(u16::from_be_bytes(p))),
        f::UDP_SRC => exact::<2>(&tlv).map(|p| SetField::UdpSrc(u16::from_be_bytes(p))),
        f::UDP_DST => exact::<2>(&tlv).map(|p| SetField::UdpDst(u16::from_be_bytes(p))),
        _ => None,
    };
    Ok(sf.unwrap_or(SetField::Other(tlv)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_prefix_clears_host_bits_and_reports_length() {
        let m = Masked::ipv4_prefix(Ipv4Addr::new(100, 64, 1, 77), 24);
        assert_eq!(m.value, Ipv4Addr::new(100, 64, 1, 0));
        assert_eq!(m.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(m.prefix_len(), Some(24));
        assert!(m.contains(Ipv4Addr::new(100, 64, 1, 200)));
        assert!(!m.contains(Ipv4Addr::new(100, 64, 2, 1)));
        assert_eq!(
            Masked::ipv4_prefix(Ipv4Addr::new(1, 2, 3, 4), 32).mask,
            None
        );
        assert_eq!(
            Masked::ipv4_prefix(Ipv4Addr::new(1, 2, 3, 4), 0).mask,
            Some(Ipv4Addr::UNSPECIFIED)
        );
        let odd = Masked {
            value: Ipv4Addr::UNSPECIFIED,
            mask: Some(Ipv4Addr::new(255, 0, 255, 0)),
        };
        assert_eq!(odd.prefix_len(), None);
    }

    #[test]
    fn empty_match_is_eight_bytes() {
        let mut out = Vec::new();
        encode_match(&Match::default(), &mut out).unwrap();
        assert_eq!(out, [0, 1, 0, 4, 0, 0, 0, 0]);
        let mut r = Reader::new(&out);
        assert_eq!(decode_match(&mut r).unwrap(), Match::default());
        assert!(r.is_empty());
    }

    #[test]
    fn prerequisites_are_filled_in() {
        let m = Match {
            udp_dst: Some(53),
            ..Match::default()
        }
        .with_prerequisites();
        assert_eq!(m.ip_proto, Some(IP_PROTO_UDP));
        assert_eq!(m.eth_type, Some(ETH_TYPE_IPV4));
    }

    #[test]
    fn unmodelled_and_odd_tlvs_go_to_other_and_duplicates_fail() {
        // in_port with a mask (not modelled as maskable) and a VLAN field (6).
        let bytes = [
            0, 1, 0, 22, 0x80, 0, 1, 8, 0, 0, 0, 1, 0, 0, 0, 0xff, 0x80, 0, 12, 2, 0x10, 0x05, 0, 0,
        ];
        let m = decode_match(&mut Reader::new(&bytes)).unwrap();
        assert_eq!(m.in_port, None);
        assert_eq!(m.other.len(), 2);
        assert_eq!(m.other[1].field, 6);
        let dup = [
            0, 1, 0, 20, 0x80, 0, 0, 4, 0, 0, 0, 1, 0x80, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 0,
        ];
        assert_eq!(
            decode_match(&mut Reader::new(&dup)),
            Err(DecodeError::DuplicateField { field: 0 })
        );
    }
}
