//! Packet vectors for RFC 6888 (CGN: port blocks, logging, bounded events) and the data-plane
//! rules (TTL, IP options, fragments, malformed headers, counters). RFC 4787/5382/5508 vectors
//! are in `rfc.rs`. Every translated packet is re-checked with etherparse (`common::expect`).

mod common;

use common::*;
use core::time::Duration;
use flowshift_nat::{BlockAction, DropReason, IpOptionsPolicy, Nat, NatConfig};
use std::collections::HashSet;
use std::net::Ipv4Addr;

// ===================================================================== RFC 6888 (CGN)

fn small_pool() -> NatConfig {
    NatConfig {
        port_min: 1024,
        port_max: 1024 + 3 * 64 - 1,
        block_size: 64,
        max_blocks_per_subscriber: 2,
        ..config()
    }
}

#[test]
fn rfc6888_req3_4_port_block_per_subscriber_limit() {
    let mut nat = Nat::new(small_pool()).unwrap();
    let block = |p: u16| (p - 1024) / 64;
    let mut blocks_a = HashSet::new();
    for i in 0..128u16 {
        let o = out(&mut nat, t0(), &udp(SUB_A, 10000 + i, SRV_X, 53, b""));
        blocks_a.insert(block(sport(&o)));
    }
    assert_eq!(blocks_a.len(), 2, "128 ports fill exactly two blocks of 64");
    // The limit: two blocks.
    expect_drop(
        &mut nat,
        t0(),
        &udp(SUB_A, 20000, SRV_X, 53, b""),
        DropReason::SubscriberPortLimit,
    );
    // Other protocols still have room in the subscriber's blocks.
    let t = out(&mut nat, t0(), &tcp(SUB_A, 20000, SRV_X, 80, SYN));
    assert!(
        blocks_a.contains(&block(sport(&t))),
        "TCP port outside the subscriber's blocks"
    );
    let i = out(&mut nat, t0(), &echo_request(SUB_A, SRV_X, 1, 1));
    assert!(blocks_a.contains(&block(icmp_ident(&i))));
    // B takes the last block; C finds none.
    let b = out(&mut nat, t0(), &udp(SUB_B, 10000, SRV_X, 53, b""));
    assert!(!blocks_a.contains(&block(sport(&b))));
    expect_drop(
        &mut nat,
        t0(),
        &udp(SUB_C, 10000, SRV_X, 53, b""),
        DropReason::PoolExhausted,
    );
    expect_drop(
        &mut nat,
        t0(),
        &tcp(SUB_C, 10000, SRV_X, 80, SYN),
        DropReason::PoolExhausted,
    );
    // The other group has its own pool.
    out(&mut nat, t0(), &udp(SUB_D, 10000, SRV_X, 53, b""));
    // Once A's mappings expire its blocks return to the pool and C gets one.
    let later = t0() + Duration::from_secs(400);
    advance(&mut nat, later);
    assert_eq!(nat.mapping_count(), 0);
    out(&mut nat, later, &udp(SUB_C, 10000, SRV_X, 53, b""));
    let g = nat.group_id(Ipv4Addr::from(EXT0)).unwrap();
    let stats = nat.group_stats(g).unwrap();
    assert_eq!((stats.blocks_held, stats.blocks_free), (1, 2));
    nat.check_invariants().unwrap();
}

#[test]
fn rfc6888_req12_block_allocation_logged() {
    let mut nat = Nat::new(small_pool()).unwrap();
    let mut ports_a = Vec::new();
    for i in 0..70u16 {
        ports_a.push(sport(&out(
            &mut nat,
            t0(),
            &udp(SUB_A, 10000 + i, SRV_X, 53, b""),
        )));
    }
    let t1 = t0() + Duration::from_secs(10);
    let b = out(&mut nat, t1, &udp(SUB_B, 10000, SRV_X, 53, b""));
    let ev = events(&mut nat);
    assert_eq!(ev.len(), 3, "{ev:?}");
    for e in &ev {
        assert_eq!(e.action, BlockAction::Allocated);
        assert_eq!(e.external, Ipv4Addr::from(EXT0));
        assert_eq!(e.last_port - e.first_port + 1, 64);
        assert_eq!((e.first_port - 1024) % 64, 0);
    }
    let a_events: Vec<_> = ev
        .iter()
        .filter(|e| e.subscriber == Ipv4Addr::from(SUB_A))
        .collect();
    assert_eq!(a_events.len(), 2);
    assert!(a_events.iter().all(|e| e.time == t0()));
    for p in &ports_a {
        assert!(
            a_events
                .iter()
                .any(|e| (e.first_port..=e.last_port).contains(p)),
            "port {p} outside A's logged blocks"
        );
    }
    let b_event = ev
        .iter()
        .find(|e| e.subscriber == Ipv4Addr::from(SUB_B))
        .unwrap();
    assert_eq!(b_event.time, t1);
    assert!((b_event.first_port..=b_event.last_port).contains(&sport(&b)));
    // Nothing is logged for mappings inside an already held block.
    out(&mut nat, t1, &tcp(SUB_B, 10001, SRV_X, 80, SYN));
    assert!(events(&mut nat).is_empty());
    // Release: A's blocks when its UDP mappings expire, B's when its last mapping (TCP, 4 min)
    // goes.
    let udp_gone = t0() + Duration::from_secs(301);
    advance(&mut nat, udp_gone);
    let ev = events(&mut nat);
    assert_eq!(ev.len(), 2, "{ev:?}");
    for e in &ev {
        assert_eq!(e.action, BlockAction::Released);
        assert_eq!(e.subscriber, Ipv4Addr::from(SUB_A));
        assert!(e.time > t0() + Duration::from_secs(300) && e.time <= udp_gone);
        assert!(
            a_events
                .iter()
                .any(|a| (a.first_port, a.last_port) == (e.first_port, e.last_port))
        );
    }
    advance(&mut nat, t1 + Duration::from_secs(400));
    let ev = events(&mut nat);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].action, ev[0].subscriber),
        (BlockAction::Released, Ipv4Addr::from(SUB_B))
    );
    assert_eq!(
        (ev[0].first_port, ev[0].last_port),
        (b_event.first_port, b_event.last_port)
    );
    assert_eq!(
        (
            nat.counters().blocks_allocated,
            nat.counters().blocks_released
        ),
        (3, 3)
    );
}

#[test]
fn event_queue_is_bounded_and_counts_overflow() {
    let mut nat = Nat::new(NatConfig {
        max_events: 2,
        block_size: 64,
        max_blocks_per_subscriber: 1,
        ..config()
    })
    .unwrap();
    for sub in 1..=5u8 {
        out(&mut nat, t0(), &udp([100, 64, 0, sub], 1, SRV_X, 53, b""));
    }
    assert_eq!(events(&mut nat).len(), 2);
    assert_eq!(nat.counters().events_dropped, 3);
}

// ===================================================================== data plane

#[test]
fn ttl_decremented_and_ttl_expired() {
    let mut nat = new_nat();
    let o = out(
        &mut nat,
        t0(),
        &tcp_with(SUB_A, 40000, SRV_X, 80, SYN, 64, b""),
    );
    assert_eq!(ttl(&o), 63);
    let o2 = out(
        &mut nat,
        t0(),
        &tcp_with(SUB_A, 40000, SRV_X, 80, ACK, 2, b""),
    );
    assert_eq!(ttl(&o2), 1);
    for t in [0u8, 1] {
        expect_drop(
            &mut nat,
            t0(),
            &tcp_with(SUB_A, 40000, SRV_X, 80, ACK, t, b""),
            DropReason::TtlExpired,
        );
        expect_drop(
            &mut nat,
            t0(),
            &tcp_with(SRV_X, 80, EXT0, sport(&o), ACK, t, b""),
            DropReason::TtlExpired,
        );
        expect_drop(
            &mut nat,
            t0(),
            &tcp_with(SUB_B, 40000, SRV_X, 80, SYN, t, b""),
            DropReason::TtlExpired,
        );
    }
    assert_eq!(
        nat.mapping_count(),
        1,
        "an expired packet creates no mapping"
    );
    let mut r = udp(SRV_X, 80, EXT0, 1, b"");
    set_ttl(&mut r, 255);
    let mut u = udp(SUB_A, 1, SRV_X, 80, b"");
    set_ttl(&mut u, 255);
    let o = out(&mut nat, t0(), &u);
    assert_eq!(ttl(&o), 254);
    let mut r = udp(SRV_X, 80, EXT0, sport(&o), b"");
    set_ttl(&mut r, 2);
    assert_eq!(ttl(&inb(&mut nat, t0(), &r)), 1);
}

const OPTS: [u8; 8] = [0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00]; // router alert, NOP x3, EOL

#[test]
fn ip_options_passed_by_default() {
    let mut nat = new_nat();
    assert_eq!(nat.config().ip_options, IpOptionsPolicy::Pass);
    for p in [
        udp(SUB_A, 4000, SRV_X, 53, b"opt"),
        tcp(SUB_A, 4000, SRV_X, 80, SYN),
        echo_request(SUB_A, SRV_X, 3, 1),
    ] {
        let with = with_ip_options(&p, &OPTS);
        let o = out(&mut nat, t0(), &with);
        assert_eq!(ihl(&o), 28);
        assert_eq!(o[20..28], OPTS, "options altered");
        assert_eq!(src(&o), EXT0);
        let reply = match p[9] {
            UDP => udp(SRV_X, 53, EXT0, sport(&o), b"r"),
            TCP => tcp(SRV_X, 80, EXT0, sport(&o), SYN | ACK),
            _ => echo_reply(SRV_X, EXT0, icmp_ident(&o), 1),
        };
        let r = inb(&mut nat, t0(), &with_ip_options(&reply, &OPTS));
        assert_eq!(r[20..28], OPTS);
        assert_eq!(dst(&r), SUB_A);
        assert_eq!(ports(&r).1, ports(&p).0);
    }
}

#[test]
fn ip_options_dropped_by_policy() {
    let mut nat = Nat::new(NatConfig {
        ip_options: IpOptionsPolicy::Drop,
        ..config()
    })
    .unwrap();
    let p = udp(SUB_A, 4000, SRV_X, 53, b"opt");
    expect_drop(
        &mut nat,
        t0(),
        &with_ip_options(&p, &OPTS),
        DropReason::IpOptions,
    );
    assert_eq!(nat.mapping_count(), 0);
    let o = out(&mut nat, t0(), &p);
    expect_drop(
        &mut nat,
        t0(),
        &with_ip_options(&udp(SRV_X, 53, EXT0, sport(&o), b""), &OPTS),
        DropReason::IpOptions,
    );
}

#[test]
fn ipv4_fragments_translated_via_fragment_table() {
    let mut nat = new_nat();
    let payload: Vec<u8> = (0..100u8).collect();
    let whole = udp(SUB_A, 4000, SRV_X, 53, &payload);
    let (f1, f2) = fragment(&whole, 0x1234, 24);
    let o1 = out(&mut nat, t0(), &f1);
    assert_eq!((src(&o1), dst(&o1)), (EXT0, SRV_X));
    let o2 = out(&mut nat, t0(), &f2);
    assert_eq!((src(&o2), dst(&o2)), (EXT0, SRV_X));
    assert_eq!(ttl(&o2), ttl(&f2) - 1);
    assert_eq!(&o2[20..], &f2[20..], "later fragment payload altered");
    // The reassembled datagram's UDP checksum (covering both fragments) verifies.
    let full = reassemble(&o1, &o2);
    assert_checksums_valid(&full);
    assert_eq!(&full[28..], &payload[..]);
    let ext_port = sport(&o1);
    // A non-fragmented packet of the same flow uses the same mapping.
    assert_eq!(
        sport(&out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_X, 53, b"x"))),
        ext_port
    );

    // Inbound, TCP this time.
    let t = out(&mut nat, t0(), &tcp(SUB_B, 40000, SRV_Y, 80, SYN));
    let data: Vec<u8> = (0..200u8).rev().collect();
    let reply = tcp_with(SRV_Y, 80, EXT0, sport(&t), ACK | PSH, 64, &data);
    let (r1, r2) = fragment(&reply, 0x4321, 40);
    let i1 = inb(&mut nat, t0(), &r1);
    let i2 = inb(&mut nat, t0(), &r2);
    assert_eq!(dst(&i1), SUB_B);
    assert_eq!(dst(&i2), SUB_B);
    let full = reassemble(&i1, &i2);
    assert_checksums_valid(&full);
    assert_eq!(dport(&full), 40000);

    // Out of order: a later fragment before its first is dropped (not held), and counted.
    let (g1, g2) = fragment(&udp(SUB_A, 4000, SRV_X, 53, &payload), 0x9999, 16);
    expect_drop(&mut nat, t0(), &g2, DropReason::FragmentNoState);
    out(&mut nat, t0(), &g1);
    out(&mut nat, t0(), &g2);
    // Same identification from another source is another datagram.
    let (_, h2) = fragment(&udp(SUB_C, 4000, SRV_X, 53, &payload), 0x9999, 16);
    expect_drop(&mut nat, t0(), &h2, DropReason::FragmentNoState);

    // Fragment state expires.
    let (k1, k2) = fragment(&whole, 0x7777, 24);
    out(&mut nat, t0(), &k1);
    let late = t0() + nat.config().fragment_timeout + Duration::from_millis(1);
    advance(&mut nat, late);
    expect_drop(&mut nat, late, &k2, DropReason::FragmentNoState);
    nat.check_invariants().unwrap();
}

#[test]
fn ipv4_fragment_edge_cases() {
    // A first fragment too small to hold the TCP header.
    let mut nat = Nat::new(NatConfig {
        max_fragment_flows: 1,
        ..config()
    })
    .unwrap();
    let (t1, _) = fragment(&tcp_with(SUB_A, 40000, SRV_X, 80, SYN, 64, &[7; 40]), 1, 8);
    expect_drop(&mut nat, t0(), &t1, DropReason::L4Truncated);
    assert_eq!(nat.mapping_count(), 0);
    // The table is bounded: a second concurrent fragmented datagram is refused.
    let (a1, a2) = fragment(&udp(SUB_A, 4000, SRV_X, 53, &[1; 64]), 2, 16);
    let (b1, _) = fragment(&udp(SUB_A, 4001, SRV_X, 53, &[1; 64]), 3, 16);
    out(&mut nat, t0(), &a1);
    expect_drop(&mut nat, t0(), &b1, DropReason::FragmentTableFull);
    out(&mut nat, t0(), &a2);
    // A fragment of a datagram whose session has expired meanwhile is refused.
    let mut nat = Nat::new(NatConfig {
        fragment_timeout: Duration::from_secs(3600),
        ..config()
    })
    .unwrap();
    let (c1, c2) = fragment(&udp(SUB_A, 4000, SRV_X, 53, &[1; 64]), 4, 16);
    out(&mut nat, t0(), &c1);
    advance(&mut nat, t0() + Duration::from_secs(400));
    assert_eq!(nat.mapping_count(), 0);
    expect_drop(
        &mut nat,
        t0() + Duration::from_secs(400),
        &c2,
        DropReason::FragmentNoState,
    );
}

#[test]
fn bad_ip_checksum_dropped() {
    let mut nat = new_nat();
    let mut p = udp(SUB_A, 4000, SRV_X, 53, b"x");
    p[11] ^= 1;
    expect_drop(&mut nat, t0(), &p, DropReason::BadIpChecksum);
    let mut q = udp(SRV_X, 53, EXT0, 1024, b"x");
    q[10] = q[10].wrapping_add(1);
    expect_drop(&mut nat, t0(), &q, DropReason::BadIpChecksum);
    assert_eq!(nat.mapping_count(), 0);
}

#[test]
fn truncated_headers_dropped() {
    let mut nat = new_nat();
    let p = udp(SUB_A, 4000, SRV_X, 53, b"xyz");
    expect_drop(&mut nat, t0(), &[], DropReason::Truncated);
    expect_drop(&mut nat, t0(), &p[..19], DropReason::Truncated);
    expect_drop(
        &mut nat,
        t0(),
        &p[..p.len() - 1],
        DropReason::BadTotalLength,
    );
    let mut v6 = p.clone();
    v6[0] = 0x65;
    expect_drop(&mut nat, t0(), &v6, DropReason::NotIpv4);
    let mut short_ihl = p.clone();
    short_ihl[0] = 0x44;
    fix_ip_checksum(&mut short_ihl[..]);
    expect_drop(&mut nat, t0(), &short_ihl, DropReason::BadHeaderLength);
    let mut long_ihl = p[..24].to_vec();
    long_ihl[0] = 0x4f;
    expect_drop(&mut nat, t0(), &long_ihl, DropReason::BadHeaderLength);
    let mut small_total = p.clone();
    set_total_len(&mut small_total, 19);
    fix_ip_checksum(&mut small_total);
    expect_drop(&mut nat, t0(), &small_total, DropReason::BadTotalLength);
    // Transport headers cut short (consistently: total length and checksum fixed).
    for (full, min) in [
        (tcp(SUB_A, 4000, SRV_X, 80, SYN), 20),
        (udp(SUB_A, 4000, SRV_X, 53, b""), 8),
        (echo_request(SUB_A, SRV_X, 1, 1), 8),
    ] {
        for l4 in 0..min {
            let mut cut = full[..20 + l4].to_vec();
            set_total_len(&mut cut, 20 + l4);
            fix_ip_checksum(&mut cut);
            expect_drop(&mut nat, t0(), &cut, DropReason::L4Truncated);
        }
    }
    assert_eq!(nat.mapping_count(), 0);
}

#[test]
fn unsupported_protocol_and_icmp_type_dropped() {
    let mut nat = new_nat();
    for proto in [0u8, 2, 4, 41, 47, 50, 132] {
        expect_drop(
            &mut nat,
            t0(),
            &raw_ip(SUB_A, SRV_X, proto, &[0; 24]),
            DropReason::UnsupportedProtocol,
        );
    }
    // Router advertisement / source quench / redirect are neither queries nor errors handled.
    for ty in [9u8, 4, 5] {
        let mut m = [ty, 0, 0, 0, 0, 0, 0, 0];
        let c = ones_complement(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        expect_drop(
            &mut nat,
            t0(),
            &raw_ip(SUB_A, SRV_X, ICMP, &m),
            DropReason::UnsupportedIcmp,
        );
        expect_drop(
            &mut nat,
            t0(),
            &raw_ip(SRV_X, EXT0, ICMP, &m),
            DropReason::UnsupportedIcmp,
        );
    }
    assert_eq!(nat.mapping_count(), 0);
}

#[test]
fn traffic_that_is_not_ours_dropped() {
    let mut nat = new_nat();
    // A source in 100.64/10 but outside every group's prefix.
    expect_drop(
        &mut nat,
        t0(),
        &udp([100, 64, 7, 1], 1, SRV_X, 53, b""),
        DropReason::NotOurs,
    );
    expect_drop(
        &mut nat,
        t0(),
        &tcp([100, 64, 7, 1], 1, SRV_X, 53, SYN),
        DropReason::NotOurs,
    );
    // Outside to an address in the pool prefix that is not an external address here.
    expect_drop(
        &mut nat,
        t0(),
        &udp(SRV_X, 53, [198, 18, 0, 99], 1024, b""),
        DropReason::NotOurs,
    );
    assert_eq!(nat.mapping_count(), 0);
}

#[test]
fn counters_account_for_every_packet() {
    let mut nat = new_nat();
    let o = out(&mut nat, t0(), &udp(SUB_A, 1, SRV_X, 53, b""));
    inb(&mut nat, t0(), &udp(SRV_X, 53, EXT0, sport(&o), b""));
    expect_drop(
        &mut nat,
        t0(),
        &udp(SRV_X, 53, EXT0, sport(&o) ^ 1, b""),
        DropReason::NoMapping,
    );
    let c = nat.counters();
    assert_eq!(
        (
            c.packets_in,
            c.translated_out,
            c.translated_in,
            c.total_drops()
        ),
        (3, 1, 1, 1)
    );
    assert_eq!((c.mappings_created, c.sessions_created), (1, 1));
}
