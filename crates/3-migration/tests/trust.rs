//! Migration ids, replay protection, restarts and timeouts between two instances driven by
//! hand (no harness): frames are moved explicitly, time advances in steps.

use core::time::Duration;
use flowshift_migration::proto::{self, AbortReason, Frame, Message, Prepare};
use flowshift_migration::{
    Algorithm, Instance, InstanceId, MigrationConfig, MigrationEvent, MigrationId, Params, Phase,
    Role,
};
use flowshift_nat::{GroupConfig, GroupMode, Nat, NatConfig};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;

const A: InstanceId = InstanceId(1);
const B: InstanceId = InstanceId(2);
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn group() -> GroupConfig {
    GroupConfig {
        external: EXT,
        subscribers: "100.64.0.0/24".parse().unwrap(),
    }
}

fn nat(groups: Vec<GroupConfig>) -> Nat {
    Nat::new(NatConfig {
        groups,
        port_min: 1024,
        port_max: 1024 + 32 * 64 - 1,
        block_size: 64,
        ..NatConfig::default()
    })
    .unwrap()
}

fn cfg(epoch: u32) -> MigrationConfig {
    MigrationConfig {
        max_retries: 30,
        ..MigrationConfig::default()
    }
    .with_epoch(epoch)
}

fn source(epoch: u32) -> Instance {
    Instance::new(A, nat(vec![group()]), cfg(epoch)).unwrap()
}

fn dest() -> Instance {
    Instance::new(B, nat(vec![]), cfg(0xdead)).unwrap()
}

fn params() -> Params {
    Params {
        idle_max: Duration::ZERO,
        drain: Duration::from_millis(5),
        chain_quiet: Duration::from_millis(1),
        ..Params::default()
    }
}

fn start(a: &mut Instance, now: Instant) -> MigrationId {
    let g = a.nat().group_id(EXT).unwrap();
    a.start_migration(now, g, B, Algorithm::FreezeCopy, params())
        .unwrap()
}

/// Moves frames both ways (`to_b`: deliver A's frames to B) and runs due timers, `ms` times
/// 1 ms; returns the events of A and B.
fn pump(
    a: &mut Instance,
    b: &mut Instance,
    now: &mut Instant,
    ms: u64,
    to_b: bool,
) -> (Vec<MigrationEvent>, Vec<MigrationEvent>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..ms {
        *now = *now + Duration::from_millis(1);
        if a.poll_timeout() <= *now {
            a.handle_timeout(*now);
        }
        if b.poll_timeout() <= *now {
            b.handle_timeout(*now);
        }
        for _ in 0..4 {
            while let Some((_, f)) = a.poll_transmit() {
                if to_b {
                    let _ = b.handle_transfer(*now, A, &f);
                }
            }
            while let Some((_, f)) = b.poll_transmit() {
                let _ = a.handle_transfer(*now, B, &f);
            }
        }
        while a.poll_output().is_some() {}
        while b.poll_output().is_some() {}
        ea.extend(std::iter::from_fn(|| a.poll_event()));
        eb.extend(std::iter::from_fn(|| b.poll_event()));
    }
    (ea, eb)
}

fn prepare_frame(id: MigrationId) -> Vec<u8> {
    let nc = nat(vec![]).config().clone();
    proto::encode(&Frame {
        migration: id,
        seq: 1,
        ack: 0,
        msg: Message::Prepare(Prepare {
            external: EXT.octets(),
            prefix_addr: [100, 64, 0, 0],
            prefix_len: 24,
            algorithm: Algorithm::FreezeCopy,
            held_blocks: vec![],
            port_min: nc.port_min,
            port_max: nc.port_max,
            block_size: nc.block_size,
            mappings_hint: 0,
            records_hint: 0,
        }),
    })
    .unwrap()
}

fn completed(evs: &[MigrationEvent], id: MigrationId) -> bool {
    evs.iter()
        .any(|e| matches!(e, MigrationEvent::Completed { migration, .. } if *migration == id))
}

#[test]
fn ids_carry_the_epoch_and_a_counter() {
    let mut a = source(0x1234_5678);
    let id = start(&mut a, Instant::from_secs(1));
    assert_eq!((id.source(), id.epoch(), id.counter()), (A, 0x1234_5678, 1));
    let mut a2 = source(0x0bad_f00d);
    assert_ne!(start(&mut a2, Instant::from_secs(1)), id, "another epoch");
    assert_ne!(MigrationId::next_epoch(7), 7);
}

#[test]
fn a_forged_high_counter_does_not_block_later_migrations() {
    let (mut a, mut b) = (source(11), dest());
    let mut now = Instant::from_secs(1);
    // A frame claiming to come from A under A's epoch with the highest counter: it is taken
    // as a migration of its own (nothing follows it) and poisons nothing but itself.
    let forged = MigrationId::with_epoch(A, 11, u16::MAX);
    b.handle_transfer(now, A, &prepare_frame(forged)).unwrap();
    while b.poll_transmit().is_some() {}
    // And one under a made-up epoch.
    let other = MigrationId::with_epoch(A, 99, 40_000);
    b.handle_transfer(now, A, &prepare_frame(other)).unwrap();
    while b.poll_transmit().is_some() {}
    let id = start(&mut a, now);
    let (ea, _) = pump(&mut a, &mut b, &mut now, 200, true);
    assert!(
        ea.iter()
            .any(|e| matches!(e, MigrationEvent::ReadyForCutover { .. })),
        "the real migration gets through Prepare: {ea:?}"
    );
    a.cutover_done(now, id).unwrap();
    let (ea, _) = pump(&mut a, &mut b, &mut now, 200, true);
    assert!(completed(&ea, id));
}

#[test]
fn replayed_and_finished_frames_are_refused_and_counted() {
    let (mut a, mut b) = (source(5), dest());
    let mut now = Instant::from_secs(1);
    let id = start(&mut a, now);
    pump(&mut a, &mut b, &mut now, 100, true);
    a.cutover_done(now, id).unwrap();
    let (ea, _) = pump(&mut a, &mut b, &mut now, 200, true);
    assert!(completed(&ea, id));
    let before = b.migrations().len();
    // The finished migration's Prepare again: a frame for a finished migration.
    b.handle_transfer(now, A, &prepare_frame(id)).unwrap();
    assert_eq!(b.counters().frames_finished, 1);
    assert_eq!(b.migrations().len(), before, "no migration created");
    // A frame naming another source than the connection's.
    let alien = MigrationId::with_epoch(InstanceId(9), 5, 3);
    b.handle_transfer(now, A, &prepare_frame(alien)).unwrap();
    assert_eq!(b.counters().frames_unknown, 1);
}

#[test]
fn an_unanswered_prepare_times_out_and_the_group_is_active_again() {
    let (mut a, mut b) = (source(1), dest());
    let mut now = Instant::from_secs(1);
    let id = start(&mut a, now);
    let g = a.nat().group_id(EXT).unwrap();
    assert_eq!(a.nat().group_mode(g).unwrap(), GroupMode::Draining);
    // B never hears A (frames to B are lost), well past the prepare timeout.
    let (ea, _) = pump(&mut a, &mut b, &mut now, 5_200, false);
    assert!(ea.iter().any(|e| matches!(
        e,
        MigrationEvent::Aborted { migration, role: Role::Source, reason: AbortReason::PrepareTimeout, split: false }
            if *migration == id
    )));
    assert_eq!(a.nat().group_mode(g).unwrap(), GroupMode::Active);
    assert_eq!(a.counters().prepare_timeouts, 1);
    assert!(!a.group_busy(g));
    // The next migration works.
    let id2 = start(&mut a, now);
    pump(&mut a, &mut b, &mut now, 100, true);
    a.cutover_done(now, id2).unwrap();
    let (ea, _) = pump(&mut a, &mut b, &mut now, 200, true);
    assert!(completed(&ea, id2));
}

#[test]
fn a_source_without_cutover_keeps_chaining_and_reports_again() {
    let (mut a, mut b) = (source(1), dest());
    let mut now = Instant::from_secs(1);
    let id = start(&mut a, now);
    let (ea, _) = pump(&mut a, &mut b, &mut now, 11_000, true);
    let reports = ea
        .iter()
        .filter(|e| matches!(e, MigrationEvent::AwaitingCutover { migration, external, to, .. } if *migration == id && *external == EXT && *to == B))
        .count();
    assert_eq!(reports, 2, "after 5 s and 10 s in AwaitCutover");
    assert_eq!(a.counters().cutover_overdue, 2);
    let phase = |i: &Instance| i.migrations().iter().find(|m| m.0 == id).unwrap().2;
    assert_eq!(phase(&a), Phase::AwaitCutover);
    assert_eq!(phase(&b), Phase::Transfer, "the destination waits too");
    a.cutover_done(now, id).unwrap();
    let (ea, _) = pump(&mut a, &mut b, &mut now, 200, true);
    assert!(completed(&ea, id));
}

#[test]
fn a_restarted_source_is_accepted_and_ends_its_predecessors_migration() {
    let (mut a, mut b) = (source(1), dest());
    let mut now = Instant::from_secs(1);
    let old = start(&mut a, now);
    pump(&mut a, &mut b, &mut now, 50, true);
    assert!(b.nat().group_id(EXT).is_some(), "B prepared");
    // A crashes and comes back with a new epoch (counter back to 1) and its group.
    let mut a = source(2);
    let new = start(&mut a, now);
    assert_eq!(new.counter(), old.counter());
    pump(&mut a, &mut b, &mut now, 200, true);
    assert_eq!(b.counters().sources_restarted, 1);
    let phase = |i: &Instance, id| i.migrations().iter().find(|m| m.0 == id).unwrap().2;
    assert_eq!(phase(&b, old), Phase::Aborted);
    assert_eq!(phase(&a, new), Phase::AwaitCutover);
    a.cutover_done(now, new).unwrap();
    let (ea, _) = pump(&mut a, &mut b, &mut now, 200, true);
    assert!(completed(&ea, new));
    b.nat().check_invariants().unwrap();
}

#[test]
fn a_silent_source_is_given_up_and_the_group_adopted_or_released() {
    let (mut a, mut b) = (source(1), dest());
    let mut now = Instant::from_secs(1);
    let id = start(&mut a, now);
    pump(&mut a, &mut b, &mut now, 50, true);
    // A dies: B hears nothing for peer_timeout.
    let mut dead = source(3);
    let (_, eb) = pump(&mut dead, &mut b, &mut now, 10_100, false);
    assert!(eb.iter().any(|e| matches!(
        e,
        MigrationEvent::Aborted { migration, reason: AbortReason::PeerTimeout, .. } if *migration == id
    )));
    assert_eq!(b.counters().peer_failures, 1);
    assert!(
        b.nat().group_id(EXT).is_none(),
        "an empty group is not kept"
    );
    // The controller gives the group to B.
    let g = b.adopt_group(now, group()).unwrap();
    assert_eq!(b.nat().group_mode(g).unwrap(), GroupMode::Active);
    assert_eq!(b.counters().groups_adopted, 1);
    assert_eq!(b.nat().group_stats(g).unwrap().blocks_reserved, 0);
    assert_eq!(b.counters().groups_adopted, 1);
    // ... or takes it away again.
    assert_eq!(b.release_group(now, EXT), 0);
    assert!(b.nat().group_id(EXT).is_none());
    b.nat().check_invariants().unwrap();
}

#[test]
fn the_destination_drops_an_aborted_migration_only_if_it_holds_nothing() {
    let (mut a, mut b) = (source(1), dest());
    let mut now = Instant::from_secs(1);
    let id = start(&mut a, now);
    pump(&mut a, &mut b, &mut now, 2, true);
    assert_eq!(
        b.abort(now, id).unwrap(),
        flowshift_migration::AbortOutcome::Reverted
    );
    assert!(b.nat().group_id(EXT).is_none());
    let (ea, _) = pump(&mut a, &mut b, &mut now, 50, true);
    assert!(
        ea.iter()
            .any(|e| matches!(e, MigrationEvent::Aborted { migration, .. } if *migration == id)),
        "the source hears it: {ea:?}"
    );
    let g = a.nat().group_id(EXT).unwrap();
    assert_eq!(a.nat().group_mode(g).unwrap(), GroupMode::Active);
}

#[test]
fn a_replayed_prepare_of_a_forgotten_migration_is_stale() {
    let mut a = source(8);
    let cfg = MigrationConfig {
        max_finished: 0,
        ..cfg(0xbeef)
    };
    let mut b = Instance::new(B, nat(vec![]), cfg).unwrap();
    let mut now = Instant::from_secs(1);
    let id = start(&mut a, now);
    pump(&mut a, &mut b, &mut now, 100, true);
    a.cutover_done(now, id).unwrap();
    let (ea, _) = pump(&mut a, &mut b, &mut now, 200, true);
    assert!(completed(&ea, id));
    assert!(b.migrations().is_empty(), "forgotten at once");
    let stale = b.counters().frames_stale;
    b.handle_transfer(now, A, &prepare_frame(id)).unwrap();
    assert_eq!(b.counters().frames_stale, stale + 1);
    assert!(b.migrations().is_empty(), "not accepted again");
    assert!(
        b.poll_transmit().is_none(),
        "a replayed Prepare is not acknowledged"
    );
}
