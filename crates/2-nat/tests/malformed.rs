//! Malformed input: truncations at every length, random bytes, random bit flips. The NAT must
//! never panic, must refuse what it cannot translate with a sensible counted reason, must not
//! launder a corrupted packet into a valid one, and its tables must stay consistent.

mod common;

use common::*;
use etherparse::{SlicedPacket, TransportSlice};
use flowshift_nat::{DropReason, Nat, Verdict};
use flowshift_wire::Instant;
use proptest::prelude::*;

fn now() -> Instant {
    secs(100)
}

/// A named valid packet and the verdict it gets when intact.
type Sample = (&'static str, Vec<u8>, Verdict);

/// A NAT holding mappings for the flows of [`samples`], and the samples: valid packets of each
/// kind, named, each with the verdict it gets when intact.
fn setup() -> (Nat, Vec<Sample>) {
    let mut nat = Nat::new(small_config()).unwrap();
    let mut go = |p: Vec<u8>| {
        let mut b = p;
        assert_eq!(nat.process(now(), &mut b), Verdict::ToOutside);
        b
    };
    let u = go(udp(SUB_A, 4000, SRV_X, 53, b"some udp payload"));
    let t = go(tcp(SUB_A, 40000, SRV_X, 80, SYN));
    let e = go(echo_request(SUB_A, SRV_X, 7, 1));
    let udp_in = udp(SRV_X, 53, EXT0, sport(&u), b"udp reply");
    let mut udp_in_translated = udp_in.clone();
    assert_eq!(
        nat.process(now(), &mut udp_in_translated),
        Verdict::ToInside
    );
    let samples = vec![
        (
            "tcp out",
            tcp_with(
                SUB_A,
                40000,
                SRV_X,
                80,
                ACK | PSH,
                64,
                b"GET / HTTP/1.0\r\n\r\n",
            ),
            Verdict::ToOutside,
        ),
        (
            "udp out",
            udp(SUB_A, 4000, SRV_X, 53, b"another query"),
            Verdict::ToOutside,
        ),
        (
            "echo out",
            echo_request(SUB_A, SRV_X, 7, 2),
            Verdict::ToOutside,
        ),
        (
            "tcp in",
            tcp_with(SRV_X, 80, EXT0, sport(&t), SYN | ACK, 60, b"hello"),
            Verdict::ToInside,
        ),
        ("udp in", udp_in, Verdict::ToInside),
        (
            "echo in",
            echo_reply(SRV_X, EXT0, icmp_ident(&e), 1),
            Verdict::ToInside,
        ),
        (
            "icmp error in",
            icmp_error(ROUTER, EXT0, 3, 1, &u),
            Verdict::ToInside,
        ),
        (
            "icmp error out",
            icmp_error(SUB_A, SRV_X, 3, 3, &udp_in_translated),
            Verdict::ToOutside,
        ),
    ];
    for (name, p, v) in &samples {
        let mut b = p.clone();
        assert_eq!(nat.process(now(), &mut b), *v, "intact {name}");
        assert_checksums_valid(&b);
    }
    (nat, samples)
}

/// Whether the transport checksum of `p` verifies (None: not parseable or not applicable).
fn l4_valid(p: &[u8]) -> Option<bool> {
    let s = SlicedPacket::from_ip(p).ok()?;
    let ip = s.net.as_ref()?.ipv4_ref()?.header();
    if ip.more_fragments() || ip.fragments_offset().value() != 0 {
        return None;
    }
    let (a, b) = (ip.source(), ip.destination());
    Some(match s.transport? {
        TransportSlice::Tcp(t) => t.calc_checksum_ipv4(a, b).ok()? == t.checksum(),
        TransportSlice::Udp(u) => {
            u.checksum() == 0
                || u.to_header()
                    .calc_checksum_ipv4_raw(a, b, u.payload())
                    .ok()?
                    == u.checksum()
        }
        TransportSlice::Icmpv4(i) => i.icmp_type().calc_checksum(i.payload()) == i.checksum(),
        _ => return None,
    })
}

fn ip_header_valid(p: &[u8]) -> bool {
    p.len() >= 20 && p.len() >= ihl(p) && ones_complement(&p[..ihl(p)]) == 0
}

/// Processes `p`; checks the generic contract (no panic, untouched unless translated, a
/// translated packet has a valid IPv4 header checksum and keeps its transport checksum's
/// validity) and the NAT's invariants. Returns the verdict and output.
fn process_checked(nat: &mut Nat, p: &[u8]) -> (Verdict, Vec<u8>) {
    let before = l4_valid(p);
    let (v, out) = run(nat, now(), p);
    match v {
        Verdict::ToInside | Verdict::ToOutside => {
            assert_eq!(out.len(), p.len());
            assert!(
                ip_header_valid(&out),
                "translated packet with a bad IPv4 header checksum"
            );
            let after = l4_valid(&out);
            // An ICMP error's checksum is recomputed, but only after it was verified on input.
            if let (Some(b), Some(a)) = (before, after) {
                assert_eq!(
                    a, b,
                    "transport checksum validity changed by translation: {p:02x?} -> {out:02x?}"
                );
            }
        }
        _ => assert_eq!(out, p, "refused packet modified"),
    }
    if let Err(e) = nat.check_invariants() {
        panic!("invariants broken after {p:02x?}: {e}");
    }
    (v, out)
}

#[test]
fn truncation_at_every_length_is_a_counted_drop() {
    let (mut nat, samples) = setup();
    for (name, p, _) in &samples {
        for cut in 0..p.len() {
            let drops = nat.counters().total_drops();
            let (v, _) = process_checked(&mut nat, &p[..cut]);
            // The total length field still claims the whole packet.
            let want = if cut < 20 {
                DropReason::Truncated
            } else {
                DropReason::BadTotalLength
            };
            assert_eq!(v, Verdict::Drop(want), "{name} cut to {cut} bytes");
            assert_eq!(nat.counters().total_drops(), drops + 1);
        }
    }
}

#[test]
fn consistently_truncated_headers_are_dropped() {
    // Cut, then fix the total length and the IPv4 checksum (and the ICMP checksum of errors),
    // so that only the missing transport bytes are wrong.
    let (mut nat, samples) = setup();
    for (name, p, intact) in &samples {
        let is_error = name.starts_with("icmp error");
        for cut in 20..=p.len() {
            let mut q = p[..cut].to_vec();
            set_total_len(&mut q, cut);
            fix_ip_checksum(&mut q);
            if is_error && cut >= 28 {
                fix_icmp_checksum(&mut q);
            }
            let (v, out) = process_checked(&mut nat, &q);
            let l4 = cut - 20;
            let min_l4 = match q[9] {
                TCP => 20,
                _ => 8,
            };
            if l4 < min_l4 {
                assert_eq!(
                    v,
                    Verdict::Drop(DropReason::L4Truncated),
                    "{name} with {l4} transport bytes"
                );
            } else if is_error && l4 < 8 + 28 {
                // The quote must hold the embedded IPv4 header and 8 bytes (RFC 792).
                assert_eq!(
                    v,
                    Verdict::Drop(DropReason::IcmpErrorMalformed),
                    "{name} quoting {} bytes",
                    l4 - 8
                );
            } else if is_error {
                assert_eq!(v, *intact, "{name} quoting {} bytes", l4 - 8);
                assert_checksums_valid(&out);
            } else {
                // Only payload is missing: undetectable for TCP and ICMP; either way no panic.
                assert!(matches!(
                    v,
                    Verdict::ToInside | Verdict::ToOutside | Verdict::Drop(_)
                ));
            }
        }
    }
}

#[test]
fn a_bit_flip_in_the_ipv4_header_is_never_translated() {
    let (mut nat, samples) = setup();
    for (name, p, _) in &samples {
        for bit in 0..20 * 8 {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            let (v, _) = process_checked(&mut nat, &q);
            assert!(
                matches!(v, Verdict::Drop(_)),
                "{name} with IPv4 header bit {bit} flipped: {v:?}"
            );
        }
    }
}

#[test]
fn a_bit_flip_in_an_icmp_error_is_never_translated() {
    let (mut nat, samples) = setup();
    for (name, p, _) in samples
        .iter()
        .filter(|(n, _, _)| n.starts_with("icmp error"))
    {
        for bit in 20 * 8..p.len() * 8 {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            let (v, _) = process_checked(&mut nat, &q);
            if bit / 8 == 20 && !matches!(q[20], 3 | 11 | 12) {
                // The type is no longer an error type: refused as such.
                assert!(
                    matches!(v, Verdict::Drop(_)),
                    "{name} with type bit {bit} flipped: {v:?}"
                );
            } else {
                assert_eq!(
                    v,
                    Verdict::Drop(DropReason::BadIcmpChecksum),
                    "{name} with bit {bit} flipped"
                );
            }
        }
    }
}

#[test]
fn every_single_bit_flip_is_handled() {
    let (mut nat, samples) = setup();
    for (_, p, _) in &samples {
        for bit in 0..p.len() * 8 {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            process_checked(&mut nat, &q);
        }
    }
    nat.check_invariants().unwrap();
}

/// A valid IPv4 header (checksum right) in front of random transport bytes.
fn structured() -> impl Strategy<Value = Vec<u8>> {
    let addr = prop::sample::select(vec![
        SUB_A,
        SUB_B,
        SUB_D,
        EXT0,
        EXT1,
        SRV_X,
        ROUTER,
        [100, 64, 9, 9],
    ]);
    let proto = prop_oneof![Just(TCP), Just(UDP), Just(ICMP), any::<u8>()];
    (
        addr.clone(),
        addr,
        proto,
        any::<u8>(),
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(s, d, proto, ttl, frag, l4)| {
            let mut p = raw_ip(s, d, proto, &l4);
            p[8] = ttl;
            // Mostly unfragmented; sometimes random flags and offset.
            if frag % 4 == 0 {
                p[6..8].copy_from_slice(&(frag & 0x3fff).to_be_bytes());
            }
            fix_ip_checksum(&mut p);
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        let (mut nat, _) = setup();
        process_checked(&mut nat, &bytes);
    }

    #[test]
    fn random_transport_bytes_behind_a_valid_ip_header_never_panic(
        p in structured(),
        pad in 0usize..8,
    ) {
        let (mut nat, _) = setup();
        let mut buf = p.clone();
        buf.extend(std::iter::repeat_n(0xa5u8, pad));
        let (v, out) = process_checked(&mut nat, &buf);
        prop_assert!(
            out[p.len()..].iter().all(|&b| b == 0xa5),
            "bytes past the total length modified"
        );
        let translated = matches!(v, Verdict::ToInside | Verdict::ToOutside);
        if translated && p[9] == ICMP && matches!(p[20], 3 | 11 | 12) {
            // A translated ICMP error was verified on input and its checksum recomputed.
            assert_checksums_valid(&out[..p.len()]);
        }
    }

    #[test]
    fn random_bit_flips_in_random_samples(
        which in any::<prop::sample::Index>(),
        flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let (mut nat, samples) = setup();
        let (_, p, _) = which.get(&samples);
        let mut q = p.clone();
        for f in &flips {
            let bit = f.index(q.len() * 8);
            q[bit / 8] ^= 1 << (bit % 8);
        }
        process_checked(&mut nat, &q);
        // The NAT keeps working for intact traffic afterwards.
        for (name, p, v) in &samples {
            let (got, _) = process_checked(&mut nat, p);
            prop_assert_eq!(got, *v, "{} after a corrupted packet", name);
        }
    }
}
