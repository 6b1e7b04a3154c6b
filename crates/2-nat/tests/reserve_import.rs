//! `Nat::reserve` and the batched import, and the index entries' cached rewrite staying in
//! sync with their sessions (expiry and slot reuse, export and removal, freeze).

mod common;

use common::*;
use core::time::Duration;
use flowshift_nat::record::{self, RECORD_LEN};
use flowshift_nat::{
    DropReason, Event, GroupId, MappingId, Nat, NatConfig, NatError, RemoveCause, Verdict,
};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;

fn g1(nat: &Nat) -> GroupId {
    nat.group_id(Ipv4Addr::from(EXT1)).unwrap()
}

/// Every group's records, sorted (the comparable content of the tables).
fn exported(nat: &Nat, now: Instant) -> Vec<Vec<[u8; RECORD_LEN]>> {
    nat.group_ids()
        .into_iter()
        .map(|g| {
            let mut bytes = Vec::new();
            for id in nat.group_mappings(g).unwrap() {
                nat.export_mapping(id, now, &mut bytes).unwrap();
            }
            let mut v: Vec<[u8; RECORD_LEN]> = bytes
                .chunks_exact(RECORD_LEN)
                .map(|c| c.try_into().unwrap())
                .collect();
            v.sort_unstable();
            v
        })
        .collect()
}

fn events(nat: &mut Nat) -> Vec<Event> {
    std::iter::from_fn(|| nat.poll_event()).collect()
}

/// The outbound packet of a record (TCP ACK or UDP), and the reply to its external endpoint.
fn probes(rec: &record::StateRecord) -> (Vec<u8>, Vec<u8>) {
    let (int, ip, rem, rp, ep) = (
        rec.int_addr,
        rec.int_port.get(),
        rec.rem_addr,
        rec.rem_port.get(),
        rec.ext_port.get(),
    );
    if rec.proto == TCP {
        (tcp(int, ip, rem, rp, ACK), tcp(rem, rp, EXT1, ep, ACK))
    } else {
        (udp(int, ip, rem, rp, b"o"), udp(rem, rp, EXT1, ep, b"i"))
    }
}

/// Runs `pkts` through `process_batch`; the verdicts and the packets as they came out.
fn batch(nat: &mut Nat, now: Instant, pkts: &[Vec<u8>]) -> (Vec<Verdict>, Vec<Vec<u8>>) {
    let mut out = pkts.to_vec();
    let mut v = Vec::new();
    nat.process_batch(now, &mut out, &mut v);
    (v, out)
}

#[test]
fn reserve_then_import_equals_plain_import() {
    let now = secs(1000);
    let chunks = record::fictive_records(20_000, 7);
    let mut plain = Nat::new(config()).unwrap();
    let mut reserved = Nat::new(config()).unwrap();
    reserved.reserve(20_000, 20_000);
    for c in &chunks {
        let a = plain.import(g1(&plain), now, c).unwrap();
        let b = reserved.import(g1(&reserved), now, c).unwrap();
        assert_eq!(a, b);
    }
    plain.check_invariants().unwrap();
    reserved.check_invariants().unwrap();
    assert_eq!(plain.session_count(), 20_000);
    assert_eq!(
        (plain.mapping_count(), plain.session_count()),
        (reserved.mapping_count(), reserved.session_count())
    );
    assert_eq!(
        format!("{:?}", plain.counters()),
        format!("{:?}", reserved.counters())
    );
    assert_eq!(events(&mut plain), events(&mut reserved));
    assert_eq!(exported(&plain, now), exported(&reserved, now));
    for g in plain.group_ids() {
        assert_eq!(plain.group_stats(g), reserved.group_stats(g));
    }
    // The same flows translate to the same bytes, one packet at a time and in batches.
    let recs = record::records(&chunks[0]).unwrap();
    let mut pkts = Vec::new();
    for r in recs.iter().step_by(97) {
        let (o, i) = probes(r);
        pkts.push(o);
        pkts.push(i);
    }
    let later = now + Duration::from_secs(1);
    let (va, pa) = batch(&mut plain, later, &pkts);
    for p in &pkts {
        let mut q = p.clone();
        let v = reserved.process(later, &mut q);
        assert!(matches!(v, Verdict::ToOutside | Verdict::ToInside), "{v:?}");
    }
    let (vb, pb) = batch(&mut reserved, later, &pkts);
    assert_eq!((va, pa), (vb, pb));
    plain.check_invariants().unwrap();
    reserved.check_invariants().unwrap();
}

#[test]
fn a_million_records_in_batches_after_reserve() {
    let now = secs(100_000);
    let chunks = record::fictive_records(1_000_000, 3);
    let mut nat = Nat::new(config()).unwrap();
    // 29 subscribers' mappings, 9 sessions each (the last one fewer).
    nat.reserve(111_112, 1_000_000);
    let g = g1(&nat);
    let mut sessions = 0;
    for c in &chunks {
        sessions += nat.import(g, now, c).unwrap().sessions;
    }
    assert_eq!(sessions, 1_000_000);
    assert_eq!(nat.session_count(), 1_000_000);
    assert_eq!(nat.mapping_count(), 111_112);
    assert_eq!(nat.counters().records_imported, 1_000_000);
    nat.check_invariants().unwrap();
    // A few of them translate.
    let recs = record::records(chunks.last().unwrap()).unwrap();
    let (o, i) = probes(&recs[recs.len() - 1]);
    let (v, _) = batch(&mut nat, now, &[o, i]);
    assert_eq!(v, vec![Verdict::ToOutside, Verdict::ToInside]);
}

#[test]
fn reserve_is_clamped_to_the_bounds_and_changes_nothing() {
    let cfg = NatConfig {
        max_sessions: 3000,
        max_mappings: 1000,
        ..config()
    };
    let mut nat = Nat::new(cfg).unwrap();
    nat.reserve(usize::MAX, usize::MAX);
    nat.reserve(usize::MAX / 2, 10);
    assert_eq!((nat.mapping_count(), nat.session_count()), (0, 0));
    nat.check_invariants().unwrap();
    // The bounds still hold for imports: 1000 mappings fit, the 1001st is refused.
    let chunk = &record::fictive_records(1001, 1)[0];
    let refused = nat.import(g1(&nat), secs(10), chunk);
    assert!(
        matches!(refused, Err(NatError::Import { .. })),
        "{refused:?}"
    );
    assert_eq!(nat.mapping_count(), 0);
    let ok = nat.import(g1(&nat), secs(10), &chunk[..1000 * RECORD_LEN]);
    assert_eq!(ok.unwrap().mappings, 1000);
    nat.check_invariants().unwrap();
}

#[test]
fn a_refused_import_leaves_nothing_behind_for_the_next_batch() {
    let now = secs(500);
    let chunk = &record::fictive_records(3000, 5)[0];
    let mut nat = Nat::new(config()).unwrap();
    nat.reserve(3000, 3000);
    let g = g1(&nat);
    // The batch plus a copy of its first record's mapping under another internal port but
    // the same external port: refused at the last record, after 3000 mappings were checked.
    let mut bad = chunk.clone();
    let mut dup = chunk[..RECORD_LEN].to_vec();
    dup[8..10].copy_from_slice(&60_000u16.to_be_bytes());
    bad.extend_from_slice(&dup);
    match nat.import(g, now, &bad) {
        Err(NatError::Import { index, why }) => {
            assert_eq!((index, why), (3000, "external port twice in the batch"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((nat.mapping_count(), nat.session_count()), (0, 0));
    assert_eq!(nat.counters().records_refused, 3001);
    assert!(events(&mut nat).is_empty());
    nat.check_invariants().unwrap();
    // The same ports and blocks are free for the next batch.
    assert_eq!(nat.import(g, now, chunk).unwrap().sessions, 3000);
    nat.check_invariants().unwrap();
    // And now present: the same batch again is refused, still changing nothing.
    assert!(nat.import(g, now, chunk).is_err());
    assert_eq!(nat.session_count(), 3000);
    nat.check_invariants().unwrap();
}

fn mapping_of(nat: &Nat, sub: [u8; 4], port: u16) -> MappingId {
    let g = nat.group_ids().into_iter().find(|&g| {
        nat.group_config(g)
            .unwrap()
            .subscribers
            .contains(&Ipv4Addr::from(sub))
    });
    nat.group_mappings(g.unwrap())
        .unwrap()
        .into_iter()
        .find(|&id| {
            let m = nat.mapping_info(id).unwrap();
            *m.internal.ip() == Ipv4Addr::from(sub) && m.internal.port() == port
        })
        .expect("mapping exists")
}

#[test]
fn index_entries_follow_expiry_and_slot_reuse() {
    let mut nat = Nat::new(small_config()).unwrap();
    let t = secs(100);
    let (v, out) = batch(&mut nat, t, &[udp(SUB_A, 4000, SRV_X, 53, b"a")]);
    assert_eq!(v, vec![Verdict::ToOutside]);
    let ext_a = u16::from_be_bytes([out[0][20], out[0][21]]);
    // Expired, then a new flow takes the freed slots.
    let t2 = t + Duration::from_secs(400);
    advance(&mut nat, t2);
    assert_eq!(nat.session_count(), 0);
    nat.check_invariants().unwrap();
    let (v, out) = batch(&mut nat, t2, &[udp(SUB_B, 5000, SRV_Y, 53, b"b")]);
    assert_eq!(v, vec![Verdict::ToOutside]);
    let ext_b = u16::from_be_bytes([out[0][20], out[0][21]]);
    nat.check_invariants().unwrap();
    let (v, out) = batch(
        &mut nat,
        t2,
        &[
            udp(SRV_X, 53, EXT0, ext_a, b"old"),
            udp(SRV_Y, 53, EXT0, ext_b, b"new"),
            udp(SUB_B, 5000, SRV_Y, 53, b"again"),
        ],
    );
    if ext_a != ext_b {
        assert_eq!(v[0], Verdict::Drop(DropReason::NoMapping));
    }
    assert_eq!(v[1], Verdict::ToInside);
    assert_eq!((dst(&out[1]), dport(&out[1])), (SUB_B, 5000));
    assert_eq!(v[2], Verdict::ToOutside);
    assert_eq!((src(&out[2]), sport(&out[2])), (EXT0, ext_b));
    nat.check_invariants().unwrap();
}

#[test]
fn index_entries_follow_freeze_and_unfreeze() {
    let mut nat = Nat::new(small_config()).unwrap();
    let t = secs(100);
    let (_, out) = batch(&mut nat, t, &[udp(SUB_A, 4000, SRV_X, 53, b"a")]);
    let ext = u16::from_be_bytes([out[0][20], out[0][21]]);
    let id = mapping_of(&nat, SUB_A, 4000);
    nat.set_frozen(id, true).unwrap();
    nat.check_invariants().unwrap();
    let pkts = [
        udp(SUB_A, 4000, SRV_X, 53, b"o"),
        udp(SRV_X, 53, EXT0, ext, b"i"),
    ];
    let (v, out) = batch(&mut nat, t + Duration::from_secs(1), &pkts);
    assert_eq!(v, vec![Verdict::Hold(id), Verdict::Hold(id)]);
    assert_eq!(out, pkts.to_vec(), "held packets are unchanged");
    // Frozen for longer than any timeout, then thawed: refreshed and translated again.
    let t3 = t + Duration::from_secs(4000);
    advance(&mut nat, t3);
    nat.set_frozen(id, false).unwrap();
    nat.check_invariants().unwrap();
    let fast = nat.counters().fast_path;
    let (v, out) = batch(&mut nat, t3, &pkts);
    assert_eq!(v, vec![Verdict::ToOutside, Verdict::ToInside]);
    assert_eq!(nat.counters().fast_path, fast + 2);
    assert_eq!((src(&out[0]), sport(&out[0])), (EXT0, ext));
    assert_eq!(nat.mapping_info(id).unwrap().last_seen, t3);
    nat.check_invariants().unwrap();
    // Alive one timeout after the refresh (minus a little), not expired early.
    let udp_timeout = Duration::from_secs(300);
    advance(&mut nat, t3 + udp_timeout - Duration::from_micros(1));
    assert_eq!(nat.mapping_count(), 1);
    advance(&mut nat, t3 + udp_timeout + Duration::from_secs(2));
    assert_eq!(nat.mapping_count(), 0);
}

#[test]
fn refreshes_within_one_tick_never_expire_a_session_early() {
    let mut nat = Nat::new(small_config()).unwrap();
    let t = millis(100_000);
    let o = udp(SUB_A, 4000, SRV_X, 53, b"a");
    batch(&mut nat, t, std::slice::from_ref(&o));
    // Packets every 100 us for 3 ms: several per refresh tick.
    let mut last = t;
    for k in 1..=30 {
        last = t + Duration::from_micros(100 * k);
        batch(&mut nat, last, std::slice::from_ref(&o));
    }
    nat.check_invariants().unwrap();
    advance(
        &mut nat,
        last + Duration::from_secs(300) - Duration::from_micros(1),
    );
    assert_eq!(nat.mapping_count(), 1, "expired before its timeout");
    advance(&mut nat, last + Duration::from_secs(302));
    assert_eq!(nat.mapping_count(), 0);
}

#[test]
fn index_entries_follow_export_removal_and_import() {
    let t = secs(100);
    let mut src_nat = Nat::new(small_config()).unwrap();
    let (_, out) = batch(
        &mut src_nat,
        t,
        &[
            udp(SUB_A, 4000, SRV_X, 53, b"a"),
            tcp(SUB_B, 4001, SRV_Y, 443, SYN),
        ],
    );
    let (ext_u, ext_t) = (sport(&out[0]), sport(&out[1]));
    batch(&mut src_nat, t, &[tcp(SRV_Y, 443, EXT0, ext_t, SYN | ACK)]);
    let g = src_nat.group_id(Ipv4Addr::from(EXT0)).unwrap();
    let mut dst_nat = Nat::new(small_config()).unwrap();
    let dg = dst_nat.group_id(Ipv4Addr::from(EXT0)).unwrap();
    let held: Vec<u32> = src_nat
        .held_blocks(g)
        .unwrap()
        .iter()
        .map(|h| h.block)
        .collect();
    dst_nat.reserve_blocks(dg, &held).unwrap();
    dst_nat.reserve(2, 2);
    let mut records = Vec::new();
    for id in src_nat.group_mappings(g).unwrap() {
        src_nat.export_mapping(id, t, &mut records).unwrap();
        src_nat
            .remove_mapping(id, t, RemoveCause::Migrated)
            .unwrap();
    }
    src_nat.check_invariants().unwrap();
    dst_nat.import(dg, t, &records).unwrap();
    dst_nat.check_invariants().unwrap();
    let pkts = [
        udp(SUB_A, 4000, SRV_X, 53, b"o"),
        udp(SRV_X, 53, EXT0, ext_u, b"i"),
        tcp(SUB_B, 4001, SRV_Y, 443, ACK),
        tcp(SRV_Y, 443, EXT0, ext_t, ACK),
    ];
    // (Not the outbound UDP packet: it would create a new mapping at the source.)
    let (v, _) = batch(&mut src_nat, t, &pkts[1..]);
    assert_eq!(
        v,
        vec![
            Verdict::Drop(DropReason::NoMapping),
            Verdict::Drop(DropReason::TcpNoSessionNonSyn),
            Verdict::Drop(DropReason::NoMapping),
        ]
    );
    let (v, out) = batch(&mut dst_nat, t, &pkts);
    assert_eq!(
        v,
        vec![
            Verdict::ToOutside,
            Verdict::ToInside,
            Verdict::ToOutside,
            Verdict::ToInside
        ]
    );
    assert_eq!((src(&out[0]), sport(&out[0])), (EXT0, ext_u));
    assert_eq!((dst(&out[1]), dport(&out[1])), (SUB_A, 4000));
    assert_eq!((src(&out[2]), sport(&out[2])), (EXT0, ext_t));
    assert_eq!((dst(&out[3]), dport(&out[3])), (SUB_B, 4001));
    assert_eq!(dst_nat.counters().fast_path, 4);
    dst_nat.check_invariants().unwrap();
}

/// A UDP record of subscriber `100.64.1.<sub>`, internal port `int_port`, external port
/// `ext_port`, remote `198.19.0.<rem>:53`.
fn udp_record(sub: u8, int_port: u16, ext_port: u16, rem: u8) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0] = UDP;
    r[3] = record::RECORD_VERSION;
    r[4..8].copy_from_slice(&[100, 64, 1, sub]);
    r[8..10].copy_from_slice(&int_port.to_be_bytes());
    r[10..12].copy_from_slice(&ext_port.to_be_bytes());
    r[12..16].copy_from_slice(&[198, 19, 0, rem]);
    r[16..18].copy_from_slice(&53u16.to_be_bytes());
    r[20..24].copy_from_slice(&1000u32.to_be_bytes());
    r
}

/// Imports `recs` as one batch into group 1 of `nat`.
fn import_records(nat: &mut Nat, recs: &[[u8; RECORD_LEN]]) -> Result<(u32, u32), NatError> {
    let g = g1(nat);
    nat.import(g, secs(500), &recs.concat())
        .map(|s| (s.mappings, s.sessions))
}

/// The one-pass import keeps every refusal: a mapping present before the batch is refused
/// (for a subscriber with blocks or without), the records of a batch's mapping that are not
/// adjacent are joined, a mapping with two external ports and a session twice are refused.
/// A refused batch leaves nothing.
#[test]
fn one_pass_import_keeps_every_refusal() {
    let mut nat = Nat::new(config()).unwrap();
    nat.reserve(100, 100);
    // Subscriber 10's mapping has records before and after subscriber 11's.
    let first = [
        udp_record(10, 5000, 1024, 1),
        udp_record(11, 6000, 1536, 1),
        udp_record(10, 5000, 1024, 2),
    ];
    assert_eq!(import_records(&mut nat, &first), Ok((2, 3)));
    let mut adjacent = Nat::new(config()).unwrap();
    let order = [first[0], first[2], first[1]];
    assert_eq!(import_records(&mut adjacent, &order), Ok((2, 3)));
    assert_eq!(exported(&nat, secs(500)), exported(&adjacent, secs(500)));
    nat.check_invariants().unwrap();
    let before = (
        nat.mapping_count(),
        nat.session_count(),
        nat.counters().records_refused,
    );
    let held = nat.group_stats(g1(&nat)).unwrap().blocks_held;
    assert_eq!(held, 2);
    let refusals: [(&[[u8; RECORD_LEN]], usize, &str); 4] = [
        // A new mapping of a block holder (looked up, absent), then a present one.
        (
            &[udp_record(11, 7000, 1537, 1), udp_record(10, 5000, 1024, 3)],
            1,
            "mapping already present",
        ),
        // A fresh subscriber (no lookup), then a present mapping.
        (
            &[udp_record(12, 1000, 4096, 1), udp_record(10, 5000, 1024, 4)],
            1,
            "mapping already present",
        ),
        (
            &[
                udp_record(13, 1, 2048, 1),
                udp_record(14, 1, 2560, 1),
                udp_record(13, 1, 2049, 2),
            ],
            2,
            "one mapping with two external ports",
        ),
        (
            &[
                udp_record(15, 1, 3072, 1),
                udp_record(16, 1, 3584, 1),
                udp_record(15, 1, 3072, 1),
            ],
            2,
            "duplicate session",
        ),
    ];
    for (i, (recs, index, why)) in refusals.into_iter().enumerate() {
        assert_eq!(
            import_records(&mut nat, recs),
            Err(NatError::Import { index, why }),
            "batch {i}"
        );
        assert_eq!(
            (nat.mapping_count(), nat.session_count()),
            (before.0, before.1),
            "batch {i} left nothing"
        );
        assert_eq!(nat.group_stats(g1(&nat)).unwrap().blocks_held, held);
        nat.check_invariants().unwrap();
    }
    assert!(nat.counters().records_refused > before.2);
}
