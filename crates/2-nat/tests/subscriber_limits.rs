//! Per-subscriber limits (RFC 6888 REQ-4/5): one subscriber's SYN or UDP flood stops at its
//! session limit (or its port-block limit) and every other subscriber's new connections are
//! still created and translated; the limit's count stays exact across expiry, removal, export
//! and import.

mod common;

use common::*;
use core::time::Duration;
use flowshift_nat::{DropReason, GroupId, Nat, NatConfig, RemoveCause, Verdict};
use flowshift_wire::Instant;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The flooding subscriber (group 0).
const FLOODER: [u8; 4] = SUB_A;
/// Its session limit in these tests.
const LIMIT: u32 = 1000;
/// Ports per block and blocks per subscriber: 256 ports per protocol per subscriber.
const BLOCK: u16 = 64;
const BLOCKS_PER_SUB: u16 = 4;
/// The session table's bound.
const TABLE: u32 = 8192;

/// Two groups of /24 subscribers, 32 blocks of 64 ports per address, 8192 sessions in all,
/// at most `per_subscriber` per subscriber; fixed seeds (deterministic runs).
fn limits_config(per_subscriber: u32) -> NatConfig {
    NatConfig {
        port_min: 1024,
        port_max: 1024 + 32 * BLOCK - 1,
        block_size: BLOCK,
        max_blocks_per_subscriber: BLOCKS_PER_SUB,
        max_sessions: TABLE,
        max_mappings: TABLE,
        max_sessions_per_subscriber: per_subscriber,
        hash_seed: 0x1234_5678_9abc_def0,
        rng_seed: 7,
        ..config()
    }
}

fn g0(nat: &Nat) -> GroupId {
    nat.group_id(Ipv4Addr::from(EXT0)).unwrap()
}

/// The `i`th flood packet's remote endpoint: new destination ports at every packet (and new
/// destination addresses every 60000 ports), never repeated.
fn flood_remote(i: u32) -> ([u8; 4], u16) {
    let n = i / 64;
    let addr = [203, 0, 113, 1 + (n / 60_000) as u8];
    (addr, 1 + (n % 60_000) as u16)
}

/// Subscribers other than the flooder: 20 in group 0, 20 in group 1.
fn others() -> Vec<([u8; 4], [u8; 4])> {
    (0..20u8)
        .map(|k| ([100, 64, 0, 100 + k], EXT0))
        .chain((0..20u8).map(|k| ([100, 64, 1, 100 + k], EXT1)))
        .collect()
}

/// Opens connection `k` of subscriber `sub` (group address `ext`): a TCP handshake and a UDP
/// exchange, each checked to be created and translated both ways.
#[track_caller]
fn open_connections(nat: &mut Nat, now: Instant, sub: [u8; 4], ext: [u8; 4], k: u16) {
    let sport = 30_000 + k;
    let out = expect(
        nat,
        now,
        &tcp(sub, sport, SRV_X, 443, SYN),
        Verdict::ToOutside,
    );
    assert_eq!(src(&out), ext, "translated to the group's address");
    let back = expect(
        nat,
        now,
        &tcp(SRV_X, 443, ext, sport_of(&out), SYN | ACK),
        Verdict::ToInside,
    );
    assert_eq!((dst(&back), dport(&back)), (sub, sport));
    expect(
        nat,
        now,
        &tcp(sub, sport, SRV_X, 443, ACK),
        Verdict::ToOutside,
    );
    let out = expect(
        nat,
        now,
        &udp(sub, sport, SRV_Y, 53, b"query"),
        Verdict::ToOutside,
    );
    assert_eq!(src(&out), ext);
    let back = expect(
        nat,
        now,
        &udp(SRV_Y, 53, ext, sport_of(&out), b"answer"),
        Verdict::ToInside,
    );
    assert_eq!((dst(&back), dport(&back)), (sub, sport));
}

fn sport_of(p: &[u8]) -> u16 {
    sport(p)
}

/// Runs a flood of `n` packets from the flooder built by `pkt(i)`, interleaved every 500
/// packets with a new connection of every other subscriber; returns the flood's verdicts.
fn flood_with_bystanders(
    nat: &mut Nat,
    now: Instant,
    n: u32,
    pkt: impl Fn(u32) -> Vec<u8>,
) -> Vec<Verdict> {
    let others = others();
    let mut verdicts = Vec::with_capacity(n as usize);
    for i in 0..n {
        verdicts.push(run(nat, now, &pkt(i)).0);
        if i % 500 == 499 {
            let k = (i / 500) as u16;
            for &(sub, ext) in &others {
                open_connections(nat, now, sub, ext, k);
            }
        }
    }
    verdicts
}

/// What a flood left behind, checked against the limit.
#[track_caller]
fn assert_flood_capped(nat: &Nat, verdicts: &[Verdict], bystander_sessions: u32) {
    let translated = verdicts
        .iter()
        .filter(|v| **v == Verdict::ToOutside)
        .count() as u32;
    let limited = verdicts
        .iter()
        .filter(|v| **v == Verdict::Drop(DropReason::SubscriberSessionLimit))
        .count() as u32;
    assert_eq!(translated, LIMIT, "the flood got exactly its limit");
    assert_eq!(
        limited,
        verdicts.len() as u32 - LIMIT,
        "the rest was refused"
    );
    let c = nat.counters();
    assert_eq!(
        c.drops_of(DropReason::SubscriberSessionLimit),
        u64::from(limited)
    );
    assert_eq!(c.drops_of(DropReason::SessionTableFull), 0);
    assert_eq!(c.sessions_over_subscriber_limit, 0);
    assert_eq!(nat.subscriber_sessions(Ipv4Addr::from(FLOODER)), LIMIT);
    assert_eq!(nat.session_count(), LIMIT + bystander_sessions);
    nat.check_invariants().unwrap();
}

#[test]
fn syn_flood_stops_at_the_limit_and_others_still_connect() {
    let mut nat = Nat::new(limits_config(LIMIT)).unwrap();
    let now = secs(10);
    // 20,000 SYNs from 64 source ports to new destination ports.
    let n = 20_000;
    let verdicts = flood_with_bystanders(&mut nat, now, n, |i| {
        let (addr, port) = flood_remote(i);
        tcp(FLOODER, 20_000 + (i % 64) as u16, addr, port, SYN)
    });
    // 40 bystanders x 40 rounds x (1 TCP + 1 UDP session).
    assert_flood_capped(&nat, &verdicts, 40 * 40 * 2);
    // The flooder's admitted sessions are the first ones, and they still work.
    assert!(
        verdicts[..LIMIT as usize]
            .iter()
            .all(|v| *v == Verdict::ToOutside)
    );
    let (addr, port) = flood_remote(0);
    expect(
        &mut nat,
        now,
        &tcp(FLOODER, 20_000, addr, port, ACK),
        Verdict::ToOutside,
    );
    // After the flood: every other subscriber's new connections, and a new subscriber's.
    for &(sub, ext) in &others() {
        open_connections(&mut nat, now, sub, ext, 999);
    }
    open_connections(&mut nat, now, SUB_D, EXT1, 1);
    nat.check_invariants().unwrap();
}

#[test]
fn udp_flood_to_new_ports_stops_at_the_limit_and_others_still_connect() {
    let mut nat = Nat::new(limits_config(LIMIT)).unwrap();
    let now = secs(10);
    let n = 20_000;
    let verdicts = flood_with_bystanders(&mut nat, now, n, |i| {
        let (addr, port) = flood_remote(i);
        udp(FLOODER, 20_000 + (i % 64) as u16, addr, port, b"flood")
    });
    assert_flood_capped(&nat, &verdicts, 40 * 40 * 2);
    for &(sub, ext) in &others() {
        open_connections(&mut nat, now, sub, ext, 999);
    }
    nat.check_invariants().unwrap();
}

/// Without the per-subscriber limit the same flood fills the whole table and the others'
/// connections are refused: the limit is what keeps them working.
#[test]
fn without_the_limit_the_flood_starves_everyone() {
    let mut nat = Nat::new(limits_config(TABLE)).unwrap();
    let now = secs(10);
    for i in 0..20_000 {
        let (addr, port) = flood_remote(i);
        run(
            &mut nat,
            now,
            &udp(FLOODER, 20_000 + (i % 64) as u16, addr, port, b"flood"),
        );
    }
    assert_eq!(nat.session_count(), TABLE);
    assert_eq!(
        nat.counters().drops_of(DropReason::SubscriberSessionLimit),
        0
    );
    assert_eq!(
        nat.counters().drops_of(DropReason::SessionTableFull),
        u64::from(20_000 - TABLE)
    );
    expect(
        &mut nat,
        now,
        &tcp(SUB_B, 30_000, SRV_X, 443, SYN),
        Verdict::Drop(DropReason::SessionTableFull),
    );
    nat.check_invariants().unwrap();
}

/// A flood from new source ports runs into the port-block limit first (4 blocks of 64 ports),
/// then into the session limit once the mappings it got have filled up with sessions; other
/// subscribers still get blocks of their own. The expected verdicts come from a model.
#[test]
fn udp_flood_from_new_ports_hits_the_block_limit_then_the_session_limit() {
    let mut nat = Nat::new(limits_config(LIMIT)).unwrap();
    let now = secs(10);
    let n = 20_000;
    let ports_per_sub = u32::from(BLOCK) * u32::from(BLOCKS_PER_SUB);
    let pkt = |i: u32| {
        let (addr, port) = flood_remote(i);
        udp(FLOODER, 20_000 + (i % 512) as u16, addr, port, b"flood")
    };
    let verdicts = flood_with_bystanders(&mut nat, now, n, pkt);
    // Model: a source port gets a mapping while the subscriber has a free port and room for a
    // session; a packet opens a session while the subscriber has room.
    let (mut mapped, mut sessions) = (HashSet::new(), 0u32);
    let (mut want_port, mut want_session) = (0u64, 0u64);
    for (i, v) in verdicts.iter().enumerate() {
        let sp = i % 512;
        let want = if sessions >= LIMIT {
            want_session += 1;
            Verdict::Drop(DropReason::SubscriberSessionLimit)
        } else if !mapped.contains(&sp) && mapped.len() as u32 >= ports_per_sub {
            want_port += 1;
            Verdict::Drop(DropReason::SubscriberPortLimit)
        } else {
            mapped.insert(sp);
            sessions += 1;
            Verdict::ToOutside
        };
        assert_eq!(*v, want, "flood packet {i}");
    }
    assert!(want_port > 0 && want_session > 0, "both limits were hit");
    let c = nat.counters();
    assert_eq!(c.drops_of(DropReason::SubscriberPortLimit), want_port);
    assert_eq!(c.drops_of(DropReason::SubscriberSessionLimit), want_session);
    let held = nat.held_blocks(g0(&nat)).unwrap();
    let flooder_blocks = held
        .iter()
        .filter(|b| b.subscriber == Ipv4Addr::from(FLOODER))
        .count();
    assert_eq!(flooder_blocks, usize::from(BLOCKS_PER_SUB));
    assert_eq!(nat.subscriber_sessions(Ipv4Addr::from(FLOODER)), LIMIT);
    for &(sub, ext) in &others() {
        open_connections(&mut nat, now, sub, ext, 999);
    }
    nat.check_invariants().unwrap();
}

/// Sessions that remote hosts open on a subscriber's mapping (endpoint-independent filtering)
/// count against the subscriber too.
#[test]
fn inbound_opened_sessions_count_against_the_subscriber() {
    let mut nat = Nat::new(limits_config(10)).unwrap();
    let now = secs(10);
    let out = expect(
        &mut nat,
        now,
        &udp(SUB_B, 5000, SRV_X, 53, b"hello"),
        Verdict::ToOutside,
    );
    let ext_port = sport(&out);
    for k in 0..9 {
        expect(
            &mut nat,
            now,
            &udp(SRV_Y, 1000 + k, EXT0, ext_port, b"in"),
            Verdict::ToInside,
        );
    }
    assert_eq!(nat.subscriber_sessions(Ipv4Addr::from(SUB_B)), 10);
    expect(
        &mut nat,
        now,
        &udp(SRV_Y, 2000, EXT0, ext_port, b"in"),
        Verdict::Drop(DropReason::SubscriberSessionLimit),
    );
    expect(
        &mut nat,
        now,
        &udp(SUB_B, 5000, SRV_Z, 53, b"new"),
        Verdict::Drop(DropReason::SubscriberSessionLimit),
    );
    // Existing sessions are unaffected.
    expect(
        &mut nat,
        now,
        &udp(SRV_Y, 1000, EXT0, ext_port, b"in"),
        Verdict::ToInside,
    );
    nat.check_invariants().unwrap();
}

/// A refused new mapping takes no port: no block is allocated and released per flood packet.
#[test]
fn a_subscriber_at_its_limit_takes_no_new_block() {
    let mut nat = Nat::new(limits_config(64)).unwrap();
    let now = secs(10);
    // 64 mappings with one session each: exactly one block of 64 ports.
    for p in 0..64 {
        expect(
            &mut nat,
            now,
            &udp(SUB_C, 10_000 + p, SRV_X, 53, b"x"),
            Verdict::ToOutside,
        );
    }
    let blocks_before = nat.counters().blocks_allocated;
    while nat.poll_event().is_some() {}
    for p in 64..1000 {
        expect(
            &mut nat,
            now,
            &udp(SUB_C, 10_000 + p, SRV_X, 53, b"x"),
            Verdict::Drop(DropReason::SubscriberSessionLimit),
        );
    }
    assert_eq!(nat.counters().blocks_allocated, blocks_before);
    assert_eq!(nat.counters().blocks_released, 0);
    assert!(
        nat.poll_event().is_none(),
        "no block churn in the mapping log"
    );
    nat.check_invariants().unwrap();
}

/// The count follows sessions out by expiry: once the flood's sessions have timed out, the
/// subscriber connects again.
#[test]
fn expiry_gives_the_subscriber_its_sessions_back() {
    let mut nat = Nat::new(limits_config(LIMIT)).unwrap();
    let t0 = secs(10);
    for i in 0..3000 {
        let (addr, port) = flood_remote(i);
        run(
            &mut nat,
            t0,
            &tcp(FLOODER, 20_000 + (i % 64) as u16, addr, port, SYN),
        );
    }
    assert_eq!(nat.subscriber_sessions(Ipv4Addr::from(FLOODER)), LIMIT);
    expect(
        &mut nat,
        t0,
        &tcp(FLOODER, 40_000, SRV_X, 443, SYN),
        Verdict::Drop(DropReason::SubscriberSessionLimit),
    );
    // Half-open sessions live for the transitory timeout (4 min).
    let t1 = t0 + Duration::from_secs(4 * 60 + 2);
    advance(&mut nat, t1);
    assert_eq!(nat.session_count(), 0);
    assert_eq!(nat.subscriber_sessions(Ipv4Addr::from(FLOODER)), 0);
    assert_eq!(nat.subscriber_count(), 0);
    nat.check_invariants().unwrap();
    open_connections(&mut nat, t1, FLOODER, EXT0, 1);
    assert_eq!(nat.subscriber_sessions(Ipv4Addr::from(FLOODER)), 2);
    nat.check_invariants().unwrap();
}

/// Export, removal on the source and import on a destination with a lower limit: the
/// destination installs everything (a batch is never refused for one subscriber's excess),
/// counts the excess, and refuses the subscriber's new sessions until it is back under.
#[test]
fn migration_keeps_the_counts_exact_and_imports_past_the_limit() {
    let mut src = Nat::new(limits_config(LIMIT)).unwrap();
    let t = secs(100);
    for i in 0..LIMIT {
        let (addr, port) = flood_remote(i);
        expect(
            &mut src,
            t,
            &udp(FLOODER, 20_000 + (i % 64) as u16, addr, port, b"x"),
            Verdict::ToOutside,
        );
    }
    open_connections(&mut src, t, SUB_B, EXT0, 1);
    let g = g0(&src);
    let mut dst = Nat::new(limits_config(600)).unwrap();
    let held: Vec<u32> = src
        .held_blocks(g)
        .unwrap()
        .iter()
        .map(|b| b.block)
        .collect();
    dst.reserve_blocks(g0(&dst), &held).unwrap();
    // One mapping per batch, removed from the source once installed.
    let t1 = t + Duration::from_secs(1);
    for id in src.group_mappings(g).unwrap() {
        let mut bytes = Vec::new();
        src.export_mapping(id, t1, &mut bytes).unwrap();
        dst.import(g0(&dst), t1, &bytes).unwrap();
        src.remove_mapping(id, t1, RemoveCause::Migrated).unwrap();
        src.check_invariants().unwrap();
    }
    dst.check_invariants().unwrap();
    let flooder = Ipv4Addr::from(FLOODER);
    assert_eq!(src.subscriber_sessions(flooder), 0);
    assert_eq!(src.subscriber_count(), 0);
    assert_eq!(src.session_count(), 0);
    assert_eq!(dst.subscriber_sessions(flooder), LIMIT);
    assert_eq!(dst.subscriber_sessions(Ipv4Addr::from(SUB_B)), 2);
    assert_eq!(
        dst.counters().sessions_over_subscriber_limit,
        u64::from(LIMIT - 600)
    );
    assert_eq!(dst.counters().records_refused, 0);
    // Migrated sessions work; the subscriber opens none until it is under 600 again.
    let (addr, port) = flood_remote(0);
    expect(
        &mut dst,
        t1,
        &udp(FLOODER, 20_000, addr, port, b"x"),
        Verdict::ToOutside,
    );
    expect(
        &mut dst,
        t1,
        &udp(FLOODER, 20_000, SRV_X, 9, b"new"),
        Verdict::Drop(DropReason::SubscriberSessionLimit),
    );
    open_connections(&mut dst, t1, SUB_C, EXT0, 1);
    // UDP sessions expire after 5 min: the subscriber is back to zero and connects again.
    let t2 = t1 + Duration::from_secs(5 * 60 + 2);
    advance(&mut dst, t2);
    assert_eq!(dst.subscriber_sessions(flooder), 0);
    dst.check_invariants().unwrap();
    open_connections(&mut dst, t2, FLOODER, EXT0, 2);
    dst.check_invariants().unwrap();
}

#[test]
fn a_zero_limit_is_refused() {
    let cfg = NatConfig {
        max_sessions_per_subscriber: 0,
        ..config()
    };
    assert!(Nat::new(cfg).is_err());
}
