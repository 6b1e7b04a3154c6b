//! A refused import is undone exactly. `Nat::import` installs a batch in one pass and undoes
//! it when a record is refused; afterwards the NAT must behave like a twin that never saw the
//! bad batch: the same tables, the same slots handed out next (free lists restored in their
//! order), the same block owners and reservations, no event, no expiry entry left behind —
//! whatever the fault and wherever the bad record sits in the batch.

mod common;

use common::*;
use flowshift_nat::record::{RECORD_LEN, RECORD_VERSION};
use flowshift_nat::{Event, GroupId, Nat, NatError};
use proptest::prelude::*;
use std::net::Ipv4Addr;

/// Blocks per subscriber in the generated batches (the default limit).
const BLOCKS: u16 = 4;

fn g1(nat: &Nat) -> GroupId {
    nat.group_id(Ipv4Addr::from(EXT1)).unwrap()
}

/// A record of subscriber `100.64.1.<sub>`.
fn record(proto: u8, sub: u8, int_port: u16, ext_port: u16, remote: u16) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0] = proto;
    r[1] = if proto == TCP { 3 } else { 0 };
    r[3] = RECORD_VERSION;
    r[4..8].copy_from_slice(&[100, 64, 1, sub]);
    r[8..10].copy_from_slice(&int_port.to_be_bytes());
    r[10..12].copy_from_slice(&ext_port.to_be_bytes());
    r[12..16].copy_from_slice(&[198, 19, (remote >> 8) as u8, remote as u8]);
    r[16..18].copy_from_slice(&443u16.to_be_bytes());
    r[20..24].copy_from_slice(&(1000 + u32::from(remote)).to_be_bytes());
    r
}

/// A valid batch for group 1: `mappings` mappings spread over subscribers 100.64.1.1.. (each
/// in its own 4 blocks from port 1024), alternately TCP and UDP, the i-th with `1 + i % per`
/// sessions; records of a mapping adjacent unless `interleave`, then the second session of
/// each mapping comes after all first sessions.
fn batch(mappings: u16, per: u16, interleave: bool) -> Vec<[u8; RECORD_LEN]> {
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for i in 0..mappings {
        let (sub, idx) = ((1 + i / 600) as u8, i % 600);
        let ext_port = 1024 + (u16::from(sub) - 1) * BLOCKS * 512 + idx;
        let proto = if i % 2 == 0 { TCP } else { UDP };
        for k in 0..1 + i % per {
            let r = record(proto, sub, 20_000 + idx, ext_port, i * 8 + k);
            if k == 0 || !interleave {
                first.push(r);
            } else {
                rest.push(r);
            }
        }
    }
    first.extend(rest);
    first
}

/// One way to make a batch refused.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Version,
    Protocol,
    TcpState,
    Outside,
    PortBelowRange,
    /// A copy of an earlier record (a duplicate session).
    Duplicate,
    /// An earlier record's internal endpoint with another external port.
    TwoExternalPorts,
    /// An earlier record's external port for another internal endpoint.
    PortTwice,
    /// Another subscriber in an earlier record's block.
    BlockOfAnother,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::Version),
        Just(Fault::Protocol),
        Just(Fault::TcpState),
        Just(Fault::Outside),
        Just(Fault::PortBelowRange),
        Just(Fault::Duplicate),
        Just(Fault::TwoExternalPorts),
        Just(Fault::PortTwice),
        Just(Fault::BlockOfAnother),
    ]
}

/// The batch with record `at` replaced by a faulty one (made from record `src`, earlier).
fn corrupt(good: &[[u8; RECORD_LEN]], at: usize, src: usize, f: Fault) -> Vec<[u8; RECORD_LEN]> {
    let mut bad = good.to_vec();
    let mut r = good[src];
    match f {
        Fault::Version => r[3] = 2,
        Fault::Protocol => r[0] = 47,
        Fault::TcpState => {
            r[0] = TCP;
            r[1] = 9;
        }
        Fault::Outside => r[4..8].copy_from_slice(&[100, 64, 2, 1]),
        Fault::PortBelowRange => r[10..12].copy_from_slice(&80u16.to_be_bytes()),
        Fault::Duplicate => {}
        Fault::TwoExternalPorts => {
            let p = u16::from_be_bytes([r[10], r[11]]);
            r[10..12].copy_from_slice(&(p ^ 0x100).to_be_bytes());
            r[12] ^= 0x20; // another remote: not a duplicate session
        }
        Fault::PortTwice => r[8..10].copy_from_slice(&60_000u16.to_be_bytes()),
        Fault::BlockOfAnother => {
            r[7] = 200;
            let p = u16::from_be_bytes([r[10], r[11]]);
            r[10..12].copy_from_slice(&(p ^ 1).to_be_bytes());
        }
    }
    if at >= bad.len() {
        bad.push(r);
    } else {
        bad[at] = r;
    }
    bad
}

/// A NAT with history: sessions in group 0 created and expired (so both slabs have free
/// slots, in an order the next installs follow), sessions still live, and blocks of group 1
/// reserved for a peer, as a migration destination's `Prepare` leaves them.
fn destination(reserve: bool) -> Nat {
    let mut nat = Nat::new(config()).unwrap();
    for i in 0..40u16 {
        let sub = [100, 64, 0, 10 + (i % 5) as u8];
        expect_out(&mut nat, secs(1), &udp(sub, 3000 + i, SRV_X, 53, b"q"));
    }
    for i in 0..10u16 {
        expect_out(&mut nat, secs(300), &udp(SUB_A, 5000 + i, SRV_Y, 53, b"q"));
    }
    advance(&mut nat, secs(310));
    assert_eq!(nat.session_count(), 10, "the first 40 expired");
    if reserve {
        nat.reserve_blocks(g1(&nat), &[0, 1, 2, 3, 4]).unwrap();
    }
    while nat.poll_event().is_some() {}
    nat
}

fn expect_out(nat: &mut Nat, now: flowshift_wire::Instant, pkt: &[u8]) {
    let mut p = pkt.to_vec();
    assert_eq!(nat.process(now, &mut p), flowshift_nat::Verdict::ToOutside);
}

/// Everything observable that an import may change.
fn state(nat: &mut Nat) -> String {
    let mut s = String::new();
    for g in nat.group_ids() {
        let ids = nat.group_mappings(g).unwrap();
        let mut bytes = Vec::new();
        for &id in &ids {
            nat.export_mapping(id, secs(400), &mut bytes).unwrap();
        }
        s += &format!(
            "{g:?} ids {ids:?}\nrecords {bytes:?}\nstats {:?}\nheld {:?}\n",
            nat.group_stats(g).unwrap(),
            nat.held_blocks(g).unwrap(),
        );
    }
    let mut counters = nat.counters().clone();
    counters.records_refused = 0;
    let events: Vec<Event> = std::iter::from_fn(|| nat.poll_event()).collect();
    s + &format!(
        "sessions {} mappings {}\ncounters {counters:?}\nevents {events:?}\n",
        nat.session_count(),
        nat.mapping_count()
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_refused_batch_is_undone_exactly(
        mappings in 1u16..1500,
        per in 1u16..4,
        interleave in any::<bool>(),
        reserve in any::<bool>(),
        f in fault(),
        at_frac in 0.0f64..=1.0,
        src_frac in 0.0f64..1.0,
    ) {
        let good = batch(mappings, per, interleave);
        let at = ((good.len() as f64 * at_frac) as usize).min(good.len());
        let src = ((at as f64 * src_frac) as usize).min(good.len() - 1);
        let needs_earlier = matches!(
            f,
            Fault::Duplicate | Fault::TwoExternalPorts | Fault::PortTwice | Fault::BlockOfAnother
        );
        // Those faults clash with an earlier record: there must be one, and it must stay.
        let at = if needs_earlier { at.max(src + 1) } else { at };
        let bad = corrupt(&good, at, src, f);
        let mut nat = destination(reserve);
        let mut twin = destination(reserve);
        let refused = nat.import(g1(&nat), secs(350), &bad.concat());
        prop_assert!(
            matches!(refused, Err(NatError::Import { index, .. }) if index == at),
            "{f:?} at {at}: {refused:?}"
        );
        prop_assert_eq!(nat.counters().records_refused, bad.len() as u64);
        nat.check_invariants().unwrap();
        prop_assert_eq!(state(&mut nat), state(&mut twin), "right after the refusal");
        // The next (good) batch lands in the same slots, blocks and order on both.
        for n in [&mut nat, &mut twin] {
            let g = g1(n);
            let sum = n.import(g, secs(350), &good.concat()).unwrap();
            prop_assert_eq!(sum.sessions as usize, good.len());
            n.check_invariants().unwrap();
        }
        prop_assert_eq!(state(&mut nat), state(&mut twin), "after the good batch");
        // Expiry finds the same entries on both (no entry of the undone batch remains).
        for n in [&mut nat, &mut twin] {
            advance(n, secs(3 * 3600));
            n.check_invariants().unwrap();
        }
        prop_assert_eq!(nat.session_count(), 0);
        prop_assert_eq!(state(&mut nat), state(&mut twin), "after expiry");
    }
}
