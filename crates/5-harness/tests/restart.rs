//! A node restarts mid-migration (a fresh `Instance` with a new epoch, nothing in flight to or
//! from it survives) and the controller rehomes the group: every mapping ends with exactly one
//! owner or is counted as lost, no group is left `Draining`, and a later migration works.

mod common;

use common::*;
use core::time::Duration;
use flowshift_migration::{Algorithm, Instance, Params, Phase};
use flowshift_nat::{GroupMode, Nat};
use std::net::Ipv4Addr;

fn params() -> Params {
    Params {
        batch_size: 8,
        idle_max: Duration::ZERO,
        drain: Duration::from_millis(2),
        ..Params::default()
    }
}

/// `n` flows on A (4 per subscriber address, so several port blocks and batches).
fn establish(cl: &mut Cluster, n: u32) {
    for i in 0..n {
        cl.inject(out_pkt((i / 4) * 32 + i % 4, 0));
    }
}

fn send_all(cl: &mut Cluster, n: u32, seq: u32) {
    for i in 0..n {
        cl.inject(out_pkt((i / 4) * 32 + i % 4, seq));
    }
}

fn ext0() -> Ipv4Addr {
    Ipv4Addr::from(EXT0)
}

fn fresh(id: flowshift_migration::InstanceId, groups: Vec<flowshift_nat::GroupConfig>) -> Instance {
    let cfg = mig_config().with_epoch(0x5eed_0000 | u32::from(id.0));
    Instance::new(id, Nat::new(nat_config(groups, 99)).unwrap(), cfg).unwrap()
}

fn migrate_back_and_forth(cl: &mut Cluster, to: flowshift_migration::InstanceId, n: u32) {
    let id = cl
        .migrate(ext0(), to, Algorithm::FreezeCopy, params())
        .expect("a later migration starts");
    let from = if to == A { B } else { A };
    let limit = cl.now + Duration::from_secs(2);
    let mut seq = 10;
    while !(cl.completed(id, from) && cl.completed(id, to)) && cl.now < limit {
        send_all(cl, n, seq);
        seq += 1;
        cl.advance_by(Duration::from_millis(1)).unwrap();
    }
    assert!(
        cl.completed(id, from) && cl.completed(id, to),
        "later migration completes"
    );
    assert_eq!(cl.orchestrator().owner_of(ext0()), Some(to));
}

#[test]
fn source_restart_mid_freeze_copy_rehomes_to_the_destination() {
    let mut cl = cluster(41);
    let n = 64;
    establish(&mut cl, n);
    let id = cl.start(Algorithm::FreezeCopy, params());
    let limit = cl.now + Duration::from_secs(1);
    cl.run_until(limit, Duration::from_micros(50), |c| {
        c.b.report(id).is_some_and(|r| r.batches >= 2)
    })
    .unwrap();
    assert!(
        !cl.phase_reached(id, A, Phase::AwaitCutover),
        "still moving"
    );
    let on_a = mappings(cl.a.nat(), EXT0).len() as u64;
    let on_b = mappings(cl.b.nat(), EXT0).len();
    assert!(
        on_a > 0 && on_b > 0,
        "the group is split: {on_a} on A, {on_b} on B"
    );
    // A crashes and comes back with its other group only; the controller gives EXT0 to B.
    cl.restart(fresh(A, vec![group(EXT1, [100, 64, 8, 0], 24)]))
        .unwrap();
    let r = cl.rehome(ext0(), B, Some(on_a)).unwrap();
    assert_eq!((r.from, r.to, r.sessions_lost), (A, B, Some(on_a)));
    let g = cl.group_on(B).expect("B owns the group");
    assert_eq!(cl.b.nat().group_mode(g).unwrap(), GroupMode::Active);
    assert_eq!(cl.b.nat().group_stats(g).unwrap().blocks_reserved, 0);
    assert_eq!(cl.b.counters().groups_adopted, 1);
    assert_eq!(
        mappings(cl.b.nat(), EXT0).len(),
        on_b,
        "what B received is kept"
    );
    // Every flow is served by B now (the lost ones get new mappings).
    send_all(&mut cl, n, 5);
    cl.advance_by(Duration::from_millis(50)).unwrap();
    assert_eq!(cl.check_exactly_one_owner(), (0, n as usize));
    assert!(!cl.b.group_busy(g));
    migrate_back_and_forth(&mut cl, A, n);
    cl.check_exactly_one_owner();
}

#[test]
fn destination_restart_mid_freeze_copy_rehomes_to_the_source() {
    let mut cl = cluster(42);
    let n = 64;
    establish(&mut cl, n);
    let id = cl.start(Algorithm::FreezeCopy, params());
    let limit = cl.now + Duration::from_secs(1);
    cl.run_until(limit, Duration::from_micros(50), |c| {
        c.b.report(id).is_some_and(|r| r.batches >= 2)
    })
    .unwrap();
    let on_b = mappings(cl.b.nat(), EXT0).len() as u64;
    assert!(on_b > 0);
    // B crashes and comes back with its own group only; the controller keeps EXT0 on A.
    cl.restart(fresh(B, vec![group(EXT2, [100, 64, 16, 0], 24)]))
        .unwrap();
    let r = cl.rehome(ext0(), A, Some(on_b)).unwrap();
    assert_eq!((r.to, r.sessions_lost), (A, Some(on_b)));
    let g = cl.group_on(A).expect("A keeps the group");
    assert_eq!(
        cl.a.nat().group_mode(g).unwrap(),
        GroupMode::Active,
        "not left Draining"
    );
    assert!(!cl.a.group_busy(g), "no route left to the dead destination");
    assert!(cl.group_on(B).is_none());
    send_all(&mut cl, n, 5);
    // Long enough for A's old channel to B to give up on its own.
    cl.advance_by(Duration::from_secs(12)).unwrap();
    assert_eq!(cl.check_exactly_one_owner(), (n as usize, 0));
    assert_eq!(cl.a.nat().group_mode(g).unwrap(), GroupMode::Active);
    migrate_back_and_forth(&mut cl, B, n);
    cl.check_exactly_one_owner();
}
