//! Shared packet builders, configurations and an independent checksum checker for the NAT's
//! integration tests. Packets are built with etherparse (or by hand where etherparse cannot
//! express them: fragments, IP options, truncations) and checked with etherparse, never with
//! the workspace's own parser.
#![allow(dead_code)]

use etherparse::{
    Icmpv4Slice, Ipv4HeaderSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
};
use flowshift_nat::{GroupConfig, Nat, NatConfig, Verdict};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;

/// External address of group 0 (subscribers 100.64.0.0/24).
pub const EXT0: [u8; 4] = [198, 18, 0, 1];
/// External address of group 1 (subscribers 100.64.1.0/24).
pub const EXT1: [u8; 4] = [198, 18, 0, 2];
/// Subscribers of group 0.
pub const SUB_A: [u8; 4] = [100, 64, 0, 10];
pub const SUB_B: [u8; 4] = [100, 64, 0, 11];
pub const SUB_C: [u8; 4] = [100, 64, 0, 12];
/// A subscriber of group 1.
pub const SUB_D: [u8; 4] = [100, 64, 1, 20];
/// Servers.
pub const SRV_X: [u8; 4] = [203, 0, 113, 10];
pub const SRV_Y: [u8; 4] = [203, 0, 113, 20];
pub const SRV_Z: [u8; 4] = [198, 19, 0, 30];
/// A router in 198.18.0.0/15 that originates ICMP errors.
pub const ROUTER: [u8; 4] = [198, 19, 255, 1];

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

pub fn secs(s: u64) -> Instant {
    Instant::from_secs(s)
}

pub fn millis(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

pub fn group(ext: [u8; 4], sub: [u8; 4], len: u8) -> GroupConfig {
    GroupConfig {
        external: Ipv4Addr::from(ext),
        subscribers: flowshift_nat::prefix(Ipv4Addr::from(sub), len).expect("valid prefix"),
    }
}

/// Two groups: EXT0 <- 100.64.0.0/24, EXT1 <- 100.64.1.0/24; everything else default.
pub fn config() -> NatConfig {
    NatConfig::with_groups(vec![
        group(EXT0, [100, 64, 0, 0], 24),
        group(EXT1, [100, 64, 1, 0], 24),
    ])
}

/// [`config`] with a small port pool (8 blocks of 64 ports per address), so that
/// `check_invariants` (which walks every port) stays cheap in loops.
pub fn small_config() -> NatConfig {
    NatConfig {
        port_min: 1024,
        port_max: 1024 + 8 * 64 - 1,
        block_size: 64,
        ..config()
    }
}

pub fn new_nat() -> Nat {
    Nat::new(config()).expect("valid config")
}

/// Runs every due timer up to `now`, the way a driver does.
pub fn advance(nat: &mut Nat, now: Instant) {
    for _ in 0..1_000_000 {
        if nat.poll_timeout() > now {
            return;
        }
        nat.handle_timeout(now);
    }
    panic!("handle_timeout never caught up with {now:?}");
}

// ------------------------------------------------------------------------------- builders

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("build");
    out
}

pub fn tcp_with(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, 0x1000_0000, 65000);
    h.fin = flags & FIN != 0;
    h.syn = flags & SYN != 0;
    h.rst = flags & RST != 0;
    h.psh = flags & PSH != 0;
    h.ack = flags & ACK != 0;
    h.urg = flags & 0x20 != 0;
    h.ece = flags & 0x40 != 0;
    h.cwr = flags & 0x80 != 0;
    if h.ack {
        h.acknowledgment_number = 0x2000_0000;
    }
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, ttl)
        .tcp_header(h)
        .write(&mut out, payload)
        .expect("build");
    out
}

pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    tcp_with(src, sport, dst, dport, flags, 64, b"")
}

pub fn echo_request(src: [u8; 4], dst: [u8; 4], ident: u16, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .icmpv4_echo_request(ident, seq)
        .write(&mut out, b"ping")
        .expect("build");
    out
}

pub fn echo_reply(src: [u8; 4], dst: [u8; 4], ident: u16, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .icmpv4_echo_reply(ident, seq)
        .write(&mut out, b"ping")
        .expect("build");
    out
}

/// An ICMP error (type, code) from `src` to `dst` quoting `inner` (as many bytes as given).
pub fn icmp_error(src: [u8; 4], dst: [u8; 4], ty: u8, code: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .icmpv4_raw(ty, code, [0; 4])
        .write(&mut out, inner)
        .expect("build");
    out
}

/// Any IPv4 packet with a raw payload and protocol number.
pub fn raw_ip(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + payload.len()];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(payload);
    fix_ip_checksum(&mut p);
    p
}

// ------------------------------------------------------------------ raw header surgery

/// RFC 1071 sum, written here independently of the crate under test.
pub fn ones_complement(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in bytes.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn ihl(p: &[u8]) -> usize {
    (p[0] & 0x0f) as usize * 4
}

/// Recomputes the IPv4 header checksum in place.
pub fn fix_ip_checksum(p: &mut [u8]) {
    let hl = ihl(p);
    p[10] = 0;
    p[11] = 0;
    let c = ones_complement(&p[..hl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes the checksum of the ICMP message of `p` (over the IPv4 payload).
pub fn fix_icmp_checksum(p: &mut [u8]) {
    let hl = ihl(p);
    let tl = total_len(p);
    p[hl + 2] = 0;
    p[hl + 3] = 0;
    let c = ones_complement(&p[hl..tl]);
    p[hl + 2..hl + 4].copy_from_slice(&c.to_be_bytes());
}

pub fn total_len(p: &[u8]) -> usize {
    u16::from_be_bytes([p[2], p[3]]) as usize
}

pub fn set_total_len(p: &mut [u8], len: usize) {
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

pub fn set_ttl(p: &mut [u8], ttl: u8) {
    p[8] = ttl;
    fix_ip_checksum(p);
}

/// Inserts `opts` (a multiple of 4 bytes) as IPv4 options, fixing IHL, total length and
/// header checksum. Transport checksums are unaffected (the pseudo-header has no options).
pub fn with_ip_options(p: &[u8], opts: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let hl = ihl(p);
    let mut out = Vec::with_capacity(p.len() + opts.len());
    out.extend_from_slice(&p[..hl]);
    out.extend_from_slice(opts);
    out.extend_from_slice(&p[hl..]);
    out[0] = 0x40 | ((hl + opts.len()) / 4) as u8;
    let tl = total_len(p) + opts.len();
    set_total_len(&mut out, tl);
    fix_ip_checksum(&mut out);
    out
}

/// Splits a (non-fragmented, option-less) packet into IPv4 fragments whose payload parts are
/// `first_len` bytes (a multiple of 8) and the rest, with identification `ident`.
pub fn fragment(p: &[u8], ident: u16, first_len: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_len % 8, 0);
    let hl = ihl(p);
    let payload = &p[hl..total_len(p)];
    let mk = |part: &[u8], offset: usize, more: bool| {
        let mut f = Vec::with_capacity(hl + part.len());
        f.extend_from_slice(&p[..hl]);
        f.extend_from_slice(part);
        set_total_len(&mut f, hl + part.len());
        f[4..6].copy_from_slice(&ident.to_be_bytes());
        let frag = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
        f[6..8].copy_from_slice(&frag.to_be_bytes());
        fix_ip_checksum(&mut f);
        f
    };
    (
        mk(&payload[..first_len], 0, true),
        mk(&payload[first_len..], first_len, false),
    )
}

/// Reassembles two fragments made by [`fragment`] (after translation) into one packet.
pub fn reassemble(first: &[u8], second: &[u8]) -> Vec<u8> {
    let hl = ihl(first);
    let mut p = first[..total_len(first)].to_vec();
    p.extend_from_slice(&second[ihl(second)..total_len(second)]);
    let tl = p.len();
    set_total_len(&mut p, tl);
    p[6] = 0;
    p[7] = 0;
    fix_ip_checksum(&mut p);
    assert_eq!(hl, 20);
    p
}

// ------------------------------------------------------------------------- reading

pub fn src(p: &[u8]) -> [u8; 4] {
    p[12..16].try_into().unwrap()
}

pub fn dst(p: &[u8]) -> [u8; 4] {
    p[16..20].try_into().unwrap()
}

pub fn ttl(p: &[u8]) -> u8 {
    p[8]
}

/// (source port, destination port) of TCP/UDP, or (identifier, identifier) of ICMP queries.
pub fn ports(p: &[u8]) -> (u16, u16) {
    let hl = ihl(p);
    match p[9] {
        ICMP => {
            let id = u16::from_be_bytes([p[hl + 4], p[hl + 5]]);
            (id, id)
        }
        _ => (
            u16::from_be_bytes([p[hl], p[hl + 1]]),
            u16::from_be_bytes([p[hl + 2], p[hl + 3]]),
        ),
    }
}

pub fn sport(p: &[u8]) -> u16 {
    ports(p).0
}

pub fn dport(p: &[u8]) -> u16 {
    ports(p).1
}

pub fn icmp_ident(p: &[u8]) -> u16 {
    ports(p).0
}

/// The packet quoted by an ICMP error (the ICMP payload).
pub fn icmp_inner(p: &[u8]) -> &[u8] {
    let hl = ihl(p);
    &p[hl + 8..total_len(p)]
}

// ------------------------------------------------------------- independent checksums

/// Verifies, with etherparse, the IPv4 header checksum and the transport checksum (TCP, UDP,
/// ICMPv4) of `p`; for an ICMP error also the quoted packet's IPv4 header checksum and, when the
/// quote is complete, its transport checksum. Non-first fragments: the IP header only (their
/// transport checksum covers the reassembled datagram).
pub fn assert_checksums_valid(p: &[u8]) {
    if let Err(e) = checksums_valid(p, 0) {
        panic!("{e}\npacket: {p:02x?}");
    }
}

/// True if [`assert_checksums_valid`] would pass.
pub fn checksums_ok(p: &[u8]) -> bool {
    checksums_valid(p, 0).is_ok()
}

fn checksums_valid(p: &[u8], depth: u32) -> Result<(), String> {
    let ip = Ipv4HeaderSlice::from_slice(p).map_err(|e| format!("ipv4 header: {e:?}"))?;
    let h = ip.to_header();
    let want = h.calc_header_checksum();
    if want != ip.header_checksum() {
        return Err(format!(
            "IPv4 header checksum {:#06x}, expected {want:#06x}",
            ip.header_checksum()
        ));
    }
    if h.more_fragments || h.fragment_offset.value() != 0 {
        return Ok(());
    }
    let sliced =
        SlicedPacket::from_ip(&p[..h.total_len as usize]).map_err(|e| format!("slice: {e:?}"))?;
    let (s, d) = (h.source, h.destination);
    match sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.calc_checksum_ipv4(s, d).map_err(|e| format!("{e:?}"))?;
            if want != t.checksum() {
                return Err(format!(
                    "TCP checksum {:#06x}, expected {want:#06x}",
                    t.checksum()
                ));
            }
        }
        // Checksum 0: the sender computed none (RFC 768).
        Some(TransportSlice::Udp(u)) if u.checksum() == 0 => {}
        Some(TransportSlice::Udp(u)) => {
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(s, d, u.payload())
                .map_err(|e| format!("{e:?}"))?;
            if want != u.checksum() {
                return Err(format!(
                    "UDP checksum {:#06x}, expected {want:#06x}",
                    u.checksum()
                ));
            }
        }
        Some(TransportSlice::Icmpv4(i)) => {
            check_icmp(&i)?;
            if matches!(i.type_u8(), 3 | 11 | 12) && depth == 0 {
                let inner = i.payload();
                if inner.len() >= 20 && inner[0] >> 4 == 4 && inner.len() >= ihl(inner) {
                    let tl = total_len(inner);
                    if tl <= inner.len() {
                        checksums_valid(&inner[..tl], depth + 1)
                            .map_err(|e| format!("quoted packet: {e}"))?;
                    } else {
                        // Partial quote: only the quoted IPv4 header can be checked.
                        let hl = ihl(inner);
                        if ones_complement(&inner[..hl]) != 0 {
                            return Err("quoted IPv4 header checksum wrong".into());
                        }
                    }
                }
            }
        }
        Some(other) => return Err(format!("unexpected transport {other:?}")),
        None => {}
    }
    Ok(())
}

fn check_icmp(i: &Icmpv4Slice<'_>) -> Result<(), String> {
    let want = i.icmp_type().calc_checksum(i.payload());
    if want != i.checksum() {
        return Err(format!(
            "ICMP checksum {:#06x}, expected {want:#06x}",
            i.checksum()
        ));
    }
    Ok(())
}

// --------------------------------------------------------------------------- process

/// Processes `p` and checks the verdict. A translated packet must carry valid checksums; any
/// other verdict must leave the bytes untouched. Returns the (possibly rewritten) packet.
#[track_caller]
pub fn expect(nat: &mut Nat, now: Instant, p: &[u8], want: Verdict) -> Vec<u8> {
    let mut buf = p.to_vec();
    let got = nat.process(now, &mut buf);
    assert_eq!(got, want, "verdict for packet {p:02x?}");
    match got {
        Verdict::ToInside | Verdict::ToOutside => assert_checksums_valid(&buf),
        _ => assert_eq!(
            buf, p,
            "a packet that is not translated must be left unchanged"
        ),
    }
    buf
}

/// Processes `p` and returns the verdict and the rewritten bytes (no checks).
pub fn run(nat: &mut Nat, now: Instant, p: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = p.to_vec();
    let v = nat.process(now, &mut buf);
    (v, buf)
}

// ---- helpers of the RFC vector tests (rfc.rs, rfc_cgn.rs)

/// Processes `p`, expects a drop for `reason`, and checks that exactly that counter moved.
#[track_caller]
pub fn expect_drop(nat: &mut Nat, now: Instant, p: &[u8], reason: flowshift_nat::DropReason) {
    let before = nat.counters().drops_of(reason);
    let total = nat.counters().total_drops();
    expect(nat, now, p, Verdict::Drop(reason));
    assert_eq!(
        nat.counters().drops_of(reason),
        before + 1,
        "counter of {reason:?}"
    );
    assert_eq!(
        nat.counters().total_drops(),
        total + 1,
        "exactly one drop counted"
    );
}

/// Sends `p` outbound and returns the translated packet.
#[track_caller]
pub fn out(nat: &mut Nat, now: Instant, p: &[u8]) -> Vec<u8> {
    expect(nat, now, p, Verdict::ToOutside)
}

/// Sends `p` inbound and returns the translated packet.
#[track_caller]
pub fn inb(nat: &mut Nat, now: Instant, p: &[u8]) -> Vec<u8> {
    expect(nat, now, p, Verdict::ToInside)
}

pub fn t0() -> Instant {
    // Not aligned to the timer granularity, and not zero.
    millis(1_000_500)
}

pub fn events(nat: &mut Nat) -> Vec<flowshift_nat::PortBlockEvent> {
    std::iter::from_fn(|| nat.poll_event())
        .map(|flowshift_nat::Event::PortBlock(e)| e)
        .collect()
}
