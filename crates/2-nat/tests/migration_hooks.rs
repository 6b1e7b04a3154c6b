//! The migration hooks: export to 24-byte records, atomic import on a peer that reserved the
//! blocks, group modes (Draining, Halted) and frozen mappings.

mod common;

use common::*;
use core::time::Duration;
use flowshift_nat::record::{self, FLAG_INBOUND_OPENED, RECORD_LEN, RECORD_VERSION};
use flowshift_nat::tcp::TcpState;
use flowshift_nat::{
    BlockAction, DropReason, Event, GroupId, GroupMode, MappingId, MappingInfo, Nat, NatError,
    RemoveCause, Verdict,
};
use flowshift_wire::Instant;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

fn g0(nat: &Nat) -> GroupId {
    nat.group_id(Ipv4Addr::from(EXT0)).unwrap()
}

fn infos(nat: &Nat, g: GroupId) -> Vec<MappingInfo> {
    nat.group_mappings(g)
        .unwrap()
        .into_iter()
        .map(|id| nat.mapping_info(id).unwrap())
        .collect()
}

fn mapping_of(nat: &Nat, proto: u8, sub: [u8; 4], port: u16) -> MappingId {
    let g = nat.group_ids().into_iter().find(|&g| {
        nat.group_config(g)
            .unwrap()
            .subscribers
            .contains(&Ipv4Addr::from(sub))
    });
    infos(nat, g.unwrap())
        .into_iter()
        .find(|m| m.proto == proto && m.internal == SocketAddrV4::new(Ipv4Addr::from(sub), port))
        .expect("mapping exists")
        .id
}

fn block_events(nat: &mut Nat) -> Vec<flowshift_nat::PortBlockEvent> {
    std::iter::from_fn(|| nat.poll_event())
        .map(|Event::PortBlock(e)| e)
        .collect()
}

struct Source {
    nat: Nat,
    /// Packets (outbound hits, inbound replies) that exercise every exported session.
    probes: Vec<Vec<u8>>,
}

/// A source instance with UDP (two sessions, one inbound-opened), TCP (established and
/// half-open) and ICMP mappings of three subscribers of group 0, plus one of group 1.
fn source(t: Instant) -> Source {
    let mut nat = Nat::new(small_config()).unwrap();
    let mut probes = Vec::new();
    let u = expect(
        &mut nat,
        t,
        &udp(SUB_A, 4000, SRV_X, 53, b"q"),
        Verdict::ToOutside,
    );
    expect(
        &mut nat,
        t,
        &udp(SUB_A, 4000, SRV_Y, 123, b"q"),
        Verdict::ToOutside,
    );
    // Inbound-opened session (endpoint-independent filtering).
    expect(
        &mut nat,
        t,
        &udp(SRV_Z, 999, EXT0, sport(&u), b"p2p"),
        Verdict::ToInside,
    );
    let tc = expect(
        &mut nat,
        t,
        &tcp(SUB_B, 40000, SRV_X, 443, SYN),
        Verdict::ToOutside,
    );
    expect(
        &mut nat,
        t,
        &tcp(SRV_X, 443, EXT0, sport(&tc), SYN | ACK),
        Verdict::ToInside,
    );
    let half = expect(
        &mut nat,
        t,
        &tcp(SUB_B, 40001, SRV_Y, 80, SYN),
        Verdict::ToOutside,
    );
    let e = expect(
        &mut nat,
        t,
        &echo_request(SUB_C, SRV_X, 99, 1),
        Verdict::ToOutside,
    );
    expect(
        &mut nat,
        t,
        &udp(SUB_D, 5000, SRV_X, 53, b"other group"),
        Verdict::ToOutside,
    );
    probes.push(udp(SUB_A, 4000, SRV_X, 53, b"probe"));
    probes.push(udp(SUB_A, 4000, SRV_Y, 123, b"probe"));
    probes.push(udp(SRV_Z, 999, EXT0, sport(&u), b"probe"));
    probes.push(udp(SRV_X, 53, EXT0, sport(&u), b"probe"));
    probes.push(tcp(SUB_B, 40000, SRV_X, 443, ACK | PSH));
    probes.push(tcp(SRV_X, 443, EXT0, sport(&tc), ACK));
    probes.push(tcp(SRV_Y, 80, EXT0, sport(&half), ACK));
    probes.push(echo_request(SUB_C, SRV_X, 99, 2));
    probes.push(echo_reply(SRV_X, EXT0, icmp_ident(&e), 2));
    probes.push(icmp_error(ROUTER, EXT0, 3, 1, &u));
    Source { nat, probes }
}

/// Exports every mapping of group `g` into one batch.
fn export_group(nat: &Nat, g: GroupId, now: Instant) -> (Vec<u8>, u32) {
    let mut bytes = Vec::new();
    let mut n = 0;
    for id in nat.group_mappings(g).unwrap() {
        n += nat.export_mapping(id, now, &mut bytes).unwrap();
    }
    (bytes, n)
}

/// A fresh destination that reserved the source's held blocks of group 0.
fn destination(src: &Nat) -> Nat {
    let mut dst = Nat::new(small_config()).unwrap();
    let held: Vec<u32> = src
        .held_blocks(g0(src))
        .unwrap()
        .iter()
        .map(|b| b.block)
        .collect();
    assert!(!held.is_empty());
    dst.reserve_blocks(g0(&dst), &held).unwrap();
    dst
}

#[test]
fn export_import_translates_identically() {
    let t = secs(1000);
    let Source {
        nat: mut src,
        probes,
    } = source(t);
    let g = g0(&src);
    let t1 = t + Duration::from_secs(30);
    // What the source does with every probe (probes refresh, nothing else changes state).
    let want: Vec<_> = probes.iter().map(|p| run(&mut src, t1, p)).collect();
    for (v, p) in &want {
        assert!(
            matches!(v, Verdict::ToInside | Verdict::ToOutside),
            "probe refused by the source: {v:?}"
        );
        assert_checksums_valid(p);
    }
    let before = infos(&src, g);
    for m in &before {
        src.set_frozen(m.id, true).unwrap();
    }
    // Frozen: the source holds the probes now.
    for p in &probes {
        assert!(matches!(run(&mut src, t1, p).0, Verdict::Hold(_)));
    }
    let t2 = t1 + Duration::from_millis(2500);
    let (bytes, n) = export_group(&src, g, t2);
    assert_eq!(n, before.iter().map(|m| m.sessions).sum::<u32>());
    assert_eq!(bytes.len(), n as usize * RECORD_LEN);
    let recs = record::records(&bytes).unwrap();
    for r in recs {
        assert_eq!(r.version, RECORD_VERSION);
        assert_eq!(r.reserved.get(), 0);
        assert_eq!(r.idle_ms.get(), 2500, "idle time at export");
        assert!(in_group0(r.int_addr));
        let m = before.iter().find(|m| {
            m.internal.ip().octets() == r.int_addr && m.internal.port() == r.int_port.get()
        });
        assert_eq!(
            m.map(|m| (m.proto, m.external_port)),
            Some((r.proto, r.ext_port.get()))
        );
        match r.proto {
            TCP => assert!(TcpState::from_u8(r.tcp_state).is_some()),
            _ => assert_eq!(r.tcp_state, 0),
        }
        if r.proto == ICMP {
            assert_eq!(r.rem_port.get(), 0);
        }
    }
    // The TCP states travel: one established, one half-open.
    let tcp_states: HashSet<u8> = recs
        .iter()
        .filter(|r| r.proto == TCP)
        .map(|r| r.tcp_state)
        .collect();
    assert_eq!(
        tcp_states,
        HashSet::from([TcpState::Established as u8, TcpState::SynOut as u8])
    );
    // Exactly one session was opened inbound.
    assert_eq!(
        recs.iter()
            .filter(|r| r.flags & FLAG_INBOUND_OPENED != 0)
            .count(),
        1
    );

    let mut dst = destination(&src);
    // The destination's clock is unrelated to the source's.
    let d0 = secs(777_000);
    let summary = dst.import(g0(&dst), d0, &bytes).unwrap();
    assert_eq!(
        (summary.mappings as usize, summary.sessions),
        (before.len(), n)
    );
    dst.check_invariants().unwrap();
    let after = infos(&dst, g0(&dst));
    let key = |m: &MappingInfo| (m.proto, m.internal, m.external_port, m.sessions);
    let mut a: Vec<_> = before.iter().map(key).collect();
    let mut b: Vec<_> = after.iter().map(key).collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "imported mappings differ from the exported ones");
    assert!(
        after
            .iter()
            .all(|m| !m.frozen && m.last_seen == d0 - Duration::from_millis(2500))
    );
    // The same translation, byte for byte.
    for (p, (v, out)) in probes.iter().zip(&want) {
        let (dv, dout) = run(&mut dst, d0, p);
        assert_eq!(
            (dv, &dout),
            (*v, out),
            "destination translates differently: {p:02x?}"
        );
    }
    // The source lets go: mappings removed, blocks logged as migrated out.
    let _ = block_events(&mut src);
    for m in &before {
        src.remove_mapping(m.id, t2, RemoveCause::Migrated).unwrap();
        assert_eq!(
            src.set_frozen(m.id, false),
            Err(NatError::NoMapping),
            "stale handle accepted"
        );
    }
    assert_eq!(src.group_stats(g).unwrap().mappings, 0);
    assert_eq!(src.mapping_count(), 1, "the other group is untouched");
    let out_ev = block_events(&mut src);
    assert!(!out_ev.is_empty());
    assert!(
        out_ev
            .iter()
            .all(|e| e.action == BlockAction::MigratedOut && e.time == t2)
    );
    let in_ev = block_events(&mut dst);
    assert_eq!(in_ev.len(), out_ev.len());
    assert!(
        in_ev
            .iter()
            .all(|e| e.action == BlockAction::MigratedIn && e.time == d0)
    );
    let ranges = |v: &[flowshift_nat::PortBlockEvent]| {
        let mut r: Vec<_> = v
            .iter()
            .map(|e| (e.subscriber, e.first_port, e.last_port))
            .collect();
        r.sort_unstable();
        r
    };
    assert_eq!(ranges(&in_ev), ranges(&out_ev));
    src.check_invariants().unwrap();
    // The destination keeps the subscriber in its blocks for new mappings.
    let new = expect(
        &mut dst,
        d0,
        &udp(SUB_A, 4001, SRV_X, 53, b"new"),
        Verdict::ToOutside,
    );
    let blocks_a: Vec<_> = in_ev
        .iter()
        .filter(|e| e.subscriber == Ipv4Addr::from(SUB_A))
        .collect();
    assert!(
        blocks_a
            .iter()
            .any(|e| (e.first_port..=e.last_port).contains(&sport(&new)))
    );
}

/// Whether `a` is in 100.64.0.0/24, the subscribers of group 0.
fn in_group0(a: [u8; 4]) -> bool {
    a[..3] == [100, 64, 0]
}

#[test]
fn imported_state_keeps_its_idle_time_and_tcp_state() {
    let t = secs(1000);
    let Source { nat: src, .. } = source(t);
    let g = g0(&src);
    // Exported after 200 s idle: the UDP sessions have 100 s left, ICMP none, the
    // established TCP session 2 h, the half-open one 40 s.
    let (bytes, _) = export_group(&src, g, t + Duration::from_secs(200));
    let mut dst = destination(&src);
    let d0 = secs(50_000);
    dst.import(g0(&dst), d0, &bytes).unwrap();
    let count = |dst: &Nat, proto: u8| {
        infos(dst, g0(dst))
            .iter()
            .filter(|m| m.proto == proto)
            .count()
    };
    assert_eq!(
        (count(&dst, UDP), count(&dst, TCP), count(&dst, ICMP)),
        (1, 2, 1)
    );
    advance(&mut dst, d0 + Duration::from_secs(1));
    assert_eq!(
        count(&dst, ICMP),
        0,
        "ICMP idle for 200 s survived the import"
    );
    advance(&mut dst, d0 + Duration::from_secs(39));
    assert_eq!(count(&dst, TCP), 2);
    advance(&mut dst, d0 + Duration::from_secs(41));
    assert_eq!(
        count(&dst, TCP),
        1,
        "half-open TCP session should expire 40 s after import"
    );
    advance(&mut dst, d0 + Duration::from_secs(99));
    assert_eq!(count(&dst, UDP), 1);
    advance(&mut dst, d0 + Duration::from_secs(101));
    assert_eq!(
        count(&dst, UDP),
        0,
        "UDP mapping should expire 100 s after import"
    );
    advance(&mut dst, d0 + Duration::from_secs(3600));
    assert_eq!(
        count(&dst, TCP),
        1,
        "the established session keeps the established timeout"
    );
    dst.check_invariants().unwrap();
}

/// Checks that importing `bytes` fails at record `index` and changes nothing.
#[track_caller]
fn assert_refused(name: &str, dst: &mut Nat, bytes: &[u8], index: usize, probe: &[u8]) {
    let (m, s) = (dst.mapping_count(), dst.session_count());
    let held = dst.held_blocks(g0(dst)).unwrap();
    let imported = dst.counters().records_imported;
    match dst.import(g0(dst), secs(5), bytes) {
        Err(NatError::Import { index: i, .. }) => {
            assert_eq!(i, index, "{name}: refused at the wrong record")
        }
        other => panic!("{name}: import of a bad batch returned {other:?}"),
    }
    assert_eq!(
        (dst.mapping_count(), dst.session_count()),
        (m, s),
        "a refused batch installed something"
    );
    assert_eq!(
        dst.held_blocks(g0(dst)).unwrap(),
        held,
        "a refused batch claimed blocks"
    );
    assert_eq!(dst.counters().records_imported, imported);
    assert!(
        dst.poll_event().is_none(),
        "a refused batch logged block changes"
    );
    dst.check_invariants().unwrap();
    // A packet for the first record's mapping is not translated.
    let v = run(dst, secs(5), probe).0;
    assert!(
        !matches!(v, Verdict::ToInside | Verdict::ToOutside),
        "refused mapping translates: {v:?}"
    );
}

#[test]
fn import_is_all_or_nothing() {
    let t = secs(10);
    let Source { nat: src, .. } = source(t);
    let (good, n) = export_group(&src, g0(&src), t);
    let n = n as usize;
    assert!(n >= 5);
    let rec = |i: usize| good[i * RECORD_LEN..(i + 1) * RECORD_LEN].to_vec();
    // The probe: an inbound packet of the first record's session (only an installed mapping
    // lets it in).
    let r0 = record::records(&good).unwrap()[0];
    let probe = match r0.proto {
        UDP => udp(r0.rem_addr, r0.rem_port.get(), EXT0, r0.ext_port.get(), b""),
        TCP => tcp(r0.rem_addr, r0.rem_port.get(), EXT0, r0.ext_port.get(), ACK),
        _ => echo_reply(r0.rem_addr, EXT0, r0.ext_port.get(), 1),
    };
    let last = n - 1;
    let mut cases: Vec<(&str, Vec<u8>, usize)> = Vec::new();
    let with_last = |f: &dyn Fn(&mut [u8])| {
        let mut b = good.clone();
        f(&mut b[last * RECORD_LEN..]);
        b
    };
    cases.push(("bad version", with_last(&|r| r[3] = 2), last));
    cases.push(("reserved bits", with_last(&|r| r[18] = 1), last));
    cases.push(("unknown flag", with_last(&|r| r[2] = 0x80), last));
    cases.push(("unknown protocol", with_last(&|r| r[0] = 47), last));
    cases.push((
        "subscriber outside the group",
        with_last(&|r| r[4..8].copy_from_slice(&SUB_D)),
        last,
    ));
    cases.push((
        "external port below the range",
        with_last(&|r| r[10..12].copy_from_slice(&80u16.to_be_bytes())),
        last,
    ));
    let mut dup = good.clone();
    dup.extend_from_slice(&rec(0));
    cases.push(("duplicate session", dup, n));
    // The same internal endpoint with a second external port.
    let mut two = good.clone();
    let mut r = rec(0);
    r[12..16].copy_from_slice(&[203, 0, 113, 99]);
    r[10..12].copy_from_slice(&(r0.ext_port.get() ^ 1).to_be_bytes());
    two.extend_from_slice(&r);
    cases.push(("one mapping, two external ports", two, n));
    // Another endpoint claiming an external port already in the batch.
    let mut clash = good.clone();
    let mut r = rec(0);
    r[8..10].copy_from_slice(&(r0.int_port.get() ^ 0x4000).to_be_bytes());
    clash.extend_from_slice(&r);
    cases.push(("external port twice", clash, n));
    // Another subscriber claiming a port in the first record's block.
    let mut other_sub = good.clone();
    let mut r = rec(0);
    r[4..8].copy_from_slice(&[100, 64, 0, 200]);
    r[10..12].copy_from_slice(&(r0.ext_port.get() ^ 1).to_be_bytes());
    other_sub.extend_from_slice(&r);
    cases.push(("two subscribers in one block", other_sub, n));
    let mut bad_tcp = good.clone();
    let i_tcp = (0..n).find(|&i| good[i * RECORD_LEN] == TCP).unwrap();
    bad_tcp[i_tcp * RECORD_LEN + 1] = 9;
    cases.push(("bad TCP state", bad_tcp, i_tcp));
    let mut udp_state = good.clone();
    let i_udp = (0..n).find(|&i| good[i * RECORD_LEN] == UDP).unwrap();
    udp_state[i_udp * RECORD_LEN + 1] = 3;
    cases.push(("TCP state on UDP", udp_state, i_udp));
    let mut icmp_port = good.clone();
    let i_icmp = (0..n).find(|&i| good[i * RECORD_LEN] == ICMP).unwrap();
    icmp_port[i_icmp * RECORD_LEN + 17] = 1;
    cases.push(("ICMP with a remote port", icmp_port, i_icmp));
    cases.push((
        "length not a multiple of 24",
        good[..good.len() - 1].to_vec(),
        0,
    ));
    for (name, bytes, index) in &cases {
        let mut dst = destination(&src);
        assert_refused(name, &mut dst, bytes, *index, &probe);
        assert_eq!(
            dst.counters().records_refused,
            (bytes.len() / RECORD_LEN).max(1) as u64,
            "{name}: every record of the refused batch is counted"
        );
        assert_eq!(dst.counters().records_imported, 0, "{name}");
    }
    // Conflicts with the destination's own state.
    let mut dst = destination(&src);
    dst.import(g0(&dst), secs(5), &good).unwrap();
    let _ = block_events(&mut dst);
    assert_refused_keep(&mut dst, &good, 0);
    // A destination that did not reserve the blocks and handed them all to other subscribers.
    let mut dst = Nat::new(small_config()).unwrap();
    for i in 0..small_config().blocks_per_group() {
        expect(
            &mut dst,
            secs(5),
            &udp([100, 64, 0, 200 + i as u8], 1, SRV_X, 53, b""),
            Verdict::ToOutside,
        );
    }
    let _ = block_events(&mut dst);
    assert_refused("blocks held by others", &mut dst, &good, 0, &probe);
}

/// Importing a batch whose mappings are already present fails at `index` and changes nothing.
#[track_caller]
fn assert_refused_keep(dst: &mut Nat, bytes: &[u8], index: usize) {
    let (m, s) = (dst.mapping_count(), dst.session_count());
    match dst.import(g0(dst), secs(6), bytes) {
        Err(NatError::Import { index: i, .. }) => assert_eq!(i, index),
        other => panic!("re-import returned {other:?}"),
    }
    assert_eq!((dst.mapping_count(), dst.session_count()), (m, s));
    assert!(dst.poll_event().is_none());
    dst.check_invariants().unwrap();
}

#[test]
fn draining_returns_to_peer_for_misses_and_serves_hits() {
    let t = secs(100);
    let mut nat = Nat::new(small_config()).unwrap();
    let g = g0(&nat);
    let o = expect(
        &mut nat,
        t,
        &udp(SUB_A, 4000, SRV_X, 53, b"q"),
        Verdict::ToOutside,
    );
    let tc = expect(
        &mut nat,
        t,
        &tcp(SUB_B, 40000, SRV_X, 80, SYN),
        Verdict::ToOutside,
    );
    nat.set_group_mode(g, GroupMode::Draining).unwrap();
    assert_eq!(nat.group_mode(g).unwrap(), GroupMode::Draining);
    let (m, s) = (nat.mapping_count(), nat.session_count());
    // Hits are translated.
    let h = expect(
        &mut nat,
        t,
        &udp(SUB_A, 4000, SRV_X, 53, b"hit"),
        Verdict::ToOutside,
    );
    assert_eq!(sport(&h), sport(&o));
    expect(
        &mut nat,
        t,
        &udp(SRV_X, 53, EXT0, sport(&o), b"hit"),
        Verdict::ToInside,
    );
    expect(
        &mut nat,
        t,
        &tcp(SRV_X, 80, EXT0, sport(&tc), SYN | ACK),
        Verdict::ToInside,
    );
    // New sessions under existing mappings, both directions.
    let n = expect(
        &mut nat,
        t,
        &udp(SUB_A, 4000, SRV_Y, 123, b"new session"),
        Verdict::ToOutside,
    );
    assert_eq!(sport(&n), sport(&o));
    expect(
        &mut nat,
        t,
        &udp(SRV_Z, 7, EXT0, sport(&o), b"new remote"),
        Verdict::ToInside,
    );
    expect(
        &mut nat,
        t,
        &tcp(SUB_B, 40000, SRV_Y, 80, SYN),
        Verdict::ToOutside,
    );
    assert_eq!((nat.mapping_count(), nat.session_count()), (m, s + 3));
    // Misses go to the peer, unchanged (checked by `expect`), and create nothing.
    let chained = nat.counters().chained;
    let peer = Verdict::ToPeer(g);
    expect(&mut nat, t, &udp(SUB_A, 4001, SRV_X, 53, b"miss"), peer);
    expect(&mut nat, t, &udp(SUB_C, 4000, SRV_X, 53, b"miss"), peer);
    expect(&mut nat, t, &tcp(SUB_C, 1, SRV_X, 80, SYN), peer);
    expect(&mut nat, t, &tcp(SUB_C, 1, SRV_X, 80, ACK), peer);
    expect(&mut nat, t, &echo_request(SUB_C, SRV_X, 5, 1), peer);
    let unmapped = if sport(&o) == 1024 {
        1025
    } else {
        sport(&o) - 1
    };
    expect(&mut nat, t, &udp(SRV_X, 53, EXT0, unmapped, b"miss"), peer);
    expect(&mut nat, t, &tcp(SRV_X, 80, EXT0, unmapped, ACK), peer);
    let stray = udp(EXT0, unmapped, SRV_X, 53, b"");
    expect(&mut nat, t, &icmp_error(ROUTER, EXT0, 3, 1, &stray), peer);
    assert_eq!(nat.counters().chained, chained + 8);
    assert_eq!((nat.mapping_count(), nat.session_count()), (m, s + 3));
    // The other group is unaffected.
    expect(
        &mut nat,
        t,
        &udp(SUB_D, 1, SRV_X, 53, b""),
        Verdict::ToOutside,
    );
    // Back to active: misses create mappings again.
    nat.set_group_mode(g, GroupMode::Active).unwrap();
    expect(
        &mut nat,
        t,
        &udp(SUB_A, 4001, SRV_X, 53, b"miss"),
        Verdict::ToOutside,
    );
    nat.check_invariants().unwrap();
}

#[test]
fn halted_group_drops_everything() {
    let t = secs(100);
    let mut nat = Nat::new(small_config()).unwrap();
    let g = g0(&nat);
    let o = expect(
        &mut nat,
        t,
        &udp(SUB_A, 4000, SRV_X, 53, b"q"),
        Verdict::ToOutside,
    );
    let e = expect(
        &mut nat,
        t,
        &echo_request(SUB_B, SRV_X, 1, 1),
        Verdict::ToOutside,
    );
    nat.set_group_mode(g, GroupMode::Halted).unwrap();
    let halted = nat.counters().drops_of(DropReason::GroupHalted);
    let packets = [
        udp(SUB_A, 4000, SRV_X, 53, b"hit"),
        udp(SRV_X, 53, EXT0, sport(&o), b"hit"),
        udp(SUB_A, 4000, SRV_Y, 53, b"new session"),
        udp(SRV_Y, 53, EXT0, sport(&o), b"new remote"),
        udp(SUB_A, 4001, SRV_X, 53, b"miss"),
        tcp(SUB_C, 1, SRV_X, 80, SYN),
        echo_reply(SRV_X, EXT0, icmp_ident(&e), 1),
        icmp_error(ROUTER, EXT0, 3, 1, &o),
    ];
    for p in &packets {
        expect(&mut nat, t, p, Verdict::Drop(DropReason::GroupHalted));
    }
    assert_eq!(
        nat.counters().drops_of(DropReason::GroupHalted),
        halted + packets.len() as u64
    );
    expect(
        &mut nat,
        t,
        &udp(SUB_D, 1, SRV_X, 53, b""),
        Verdict::ToOutside,
    );
    nat.set_group_mode(g, GroupMode::Active).unwrap();
    expect(&mut nat, t, &packets[0], Verdict::ToOutside);
    expect(&mut nat, t, &packets[1], Verdict::ToInside);
    nat.check_invariants().unwrap();
}

#[test]
fn frozen_mapping_holds_packets_and_does_not_expire() {
    let t = secs(100);
    let mut nat = Nat::new(small_config()).unwrap();
    let o = expect(
        &mut nat,
        t,
        &udp(SUB_A, 4000, SRV_X, 53, b"q"),
        Verdict::ToOutside,
    );
    expect(
        &mut nat,
        t,
        &udp(SUB_B, 4000, SRV_X, 53, b"q"),
        Verdict::ToOutside,
    );
    let id = mapping_of(&nat, UDP, SUB_A, 4000);
    nat.set_frozen(id, true).unwrap();
    assert!(nat.mapping_info(id).unwrap().frozen);
    let held = nat.counters().held;
    let hold = Verdict::Hold(id);
    for p in [
        udp(SUB_A, 4000, SRV_X, 53, b"hit"),
        udp(SRV_X, 53, EXT0, sport(&o), b"hit"),
        udp(SUB_A, 4000, SRV_Y, 53, b"new session"),
        udp(SRV_Y, 53, EXT0, sport(&o), b"new remote"),
        icmp_error(ROUTER, EXT0, 3, 1, &o),
    ] {
        expect(&mut nat, t, &p, hold);
    }
    assert_eq!(nat.counters().held, held + 5);
    assert_eq!(
        nat.mapping_info(id).unwrap().sessions,
        1,
        "a held packet created a session"
    );
    // Far beyond the UDP timeout: the frozen mapping stays, the other one expires.
    let late = t + Duration::from_secs(3600);
    advance(&mut nat, late);
    assert_eq!(nat.mapping_count(), 1);
    assert_eq!(
        nat.mapping_info(id).unwrap().last_seen,
        t,
        "holding refreshed the mapping"
    );
    nat.check_invariants().unwrap();
    // Unfrozen: translated again, and it expires once idle again.
    nat.set_frozen(id, false).unwrap();
    expect(
        &mut nat,
        late,
        &udp(SRV_X, 53, EXT0, sport(&o), b"hit"),
        Verdict::ToInside,
    );
    advance(&mut nat, late + Duration::from_secs(2 * 300 + 1));
    assert_eq!(nat.mapping_count(), 0, "unfrozen mapping never expired");
}

#[test]
fn reserved_blocks_are_never_allocated() {
    let mut nat = Nat::new(small_config()).unwrap();
    let g = g0(&nat);
    let n_blocks = small_config().blocks_per_group();
    let all_but_5: Vec<u32> = (0..n_blocks).filter(|&b| b != 5).collect();
    nat.reserve_blocks(g, &all_but_5).unwrap();
    let stats = nat.group_stats(g).unwrap();
    assert_eq!(
        (stats.blocks_reserved, stats.blocks_free),
        (n_blocks - 1, 1)
    );
    let o = expect(
        &mut nat,
        secs(1),
        &udp(SUB_A, 1, SRV_X, 53, b""),
        Verdict::ToOutside,
    );
    assert_eq!((sport(&o) - 1024) / 64, 5);
    expect(
        &mut nat,
        secs(1),
        &udp(SUB_B, 1, SRV_X, 53, b""),
        Verdict::Drop(DropReason::PoolExhausted),
    );
    // Reserving a held block fails and changes nothing.
    assert_eq!(nat.reserve_blocks(g, &[0, 5]), Err(NatError::BlockInUse(5)));
    assert_eq!(nat.group_stats(g).unwrap().blocks_reserved, n_blocks - 1);
    assert_eq!(nat.release_reserved_blocks(g).unwrap(), n_blocks - 1);
    expect(
        &mut nat,
        secs(1),
        &udp(SUB_B, 1, SRV_X, 53, b""),
        Verdict::ToOutside,
    );
    let held: HashMap<u32, Ipv4Addr> = nat
        .held_blocks(g)
        .unwrap()
        .iter()
        .map(|b| (b.block, b.subscriber))
        .collect();
    assert_eq!(held.len(), 2);
    assert_eq!(held[&5], Ipv4Addr::from(SUB_A));
    nat.check_invariants().unwrap();
}
