//! Unit tests of the recovery paths: abort, stage timeouts, rehoming, adoption after a restart.

use super::*;
use crate::orchestrator::tests::orch;
use flowshift_migration::{AbortReason, Algorithm, MigrationEvent, Role};

const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const A: InstanceId = InstanceId(0);
const B: InstanceId = InstanceId(1);

fn running(o: &mut Orchestrator, t: Instant) -> MigrationId {
    o.request_migration(t, EXT, B, Algorithm::FreezeCopy)
        .unwrap();
    assert!(matches!(o.poll_command(), Some(Command::StartMigration(_))));
    let id = MigrationId::with_epoch(A, 77, 1);
    o.migration_started(t, EXT, Some(id));
    id
}

fn ready(o: &mut Orchestrator, t: Instant, id: MigrationId) -> u64 {
    o.handle_instance_event(
        t,
        A,
        &MigrationEvent::ReadyForCutover {
            migration: id,
            group: 0,
        },
    );
    let Some(Command::UpdateSwitch { token, .. }) = o.poll_command() else {
        panic!("expected a switch update")
    };
    token
}

#[test]
fn abort_before_the_redirect_aborts_at_both_and_keeps_the_group_at_the_source() {
    let mut o = orch();
    let t = Instant::from_secs(1);
    assert_eq!(o.abort(t, EXT), None, "nothing to abort");
    let id = running(&mut o, t);
    assert_eq!(o.abort(t, EXT), Some(AbortStage::BeforeRedirect));
    assert_eq!(
        o.poll_intervention(),
        Some(Intervention::Abort {
            on: A,
            migration: id
        })
    );
    assert_eq!(
        o.poll_intervention(),
        Some(Intervention::Abort {
            on: B,
            migration: id
        })
    );
    assert_eq!(o.poll_intervention(), None);
    o.handle_instance_event(
        t,
        A,
        &MigrationEvent::Aborted {
            migration: id,
            role: Role::Source,
            reason: AbortReason::Requested,
            split: false,
        },
    );
    assert_eq!(o.migrations()[0].stage, Stage::Aborted);
    assert_eq!(o.owner_of(EXT), Some(A));
}

#[test]
fn a_source_completing_forward_after_abort_is_still_redirected() {
    let mut o = orch();
    let t = Instant::from_secs(1);
    let id = running(&mut o, t);
    o.abort(t, EXT);
    ready(&mut o, t, id);
    assert_eq!(o.owner_of(EXT), Some(B));
    assert_eq!(o.abort(t, EXT), Some(AbortStage::AfterRedirect));
}

#[test]
fn an_abort_requested_before_the_id_is_sent_when_it_comes() {
    let mut o = orch();
    let t = Instant::from_secs(1);
    o.request_migration(t, EXT, B, Algorithm::StopCopy).unwrap();
    o.poll_command();
    assert_eq!(o.abort(t, EXT), Some(AbortStage::BeforeRedirect));
    assert_eq!(o.migrations()[0].stage, Stage::Aborted);
    // The request was already on its way: the id arrives after all.
    let id = MigrationId::with_epoch(A, 1, 1);
    o.migration_started(t, EXT, Some(id));
    assert_eq!(o.migrations()[0].stage, Stage::Aborted);
    assert_eq!(
        o.poll_intervention(),
        Some(Intervention::Abort {
            on: A,
            migration: id
        })
    );
}

#[test]
fn stage_timeouts_abort_retry_and_give_up() {
    let mut o = orch();
    let t = Instant::from_secs(1);
    let _id = running(&mut o, t);
    let d = StageTimeouts::default();
    assert_eq!(o.next_timeout(), t + Duration::from_millis(d.running_ms));
    let t1 = o.next_timeout();
    o.handle_timeout(t1);
    assert!(o.migrations()[0].abort_requested);
    assert_eq!(o.interventions.len(), 2, "abort sent to both");
    // Nobody answers (the source is dead): marked aborted, group at the source.
    let t2 = o.next_timeout();
    assert_eq!(t2, t1 + Duration::from_millis(d.abort_grace_ms));
    o.handle_timeout(t2);
    assert_eq!(o.migrations()[0].stage, Stage::Aborted);
    assert_eq!(o.owner_of(EXT), Some(A));
    assert_eq!(o.next_timeout(), Instant::MAX);
}

#[test]
fn a_lost_barrier_is_retried_then_the_group_is_left_at_the_destination() {
    let mut o = orch();
    let t = Instant::from_secs(1);
    let id = running(&mut o, t);
    let first = ready(&mut o, t, id);
    let mut now = t;
    for retry in 1..=StageTimeouts::default().redirect_retries {
        now = o.next_timeout();
        o.handle_timeout(now);
        let Some(Command::UpdateSwitch { diff, token }) = o.poll_command() else {
            panic!("expected a re-sent update")
        };
        assert_eq!(diff.modify.len(), 2);
        assert_ne!(token, first);
        assert_eq!(o.migrations()[0].redirect_retries, retry);
    }
    o.handle_barrier(now, first);
    assert_eq!(o.poll_command(), None, "a superseded barrier is ignored");
    o.handle_timeout(o.next_timeout());
    assert_eq!(o.migrations()[0].stage, Stage::Aborted);
    assert_eq!(o.owner_of(EXT), Some(B));
}

#[test]
fn rehome_moves_ownership_and_rules_without_a_transfer() {
    let mut o = orch();
    let t = Instant::from_secs(1);
    let _ = running(&mut o, t);
    // A (owner, source) dies mid-migration: B takes the group.
    let r = o.rehome(t, EXT, B, Some(1234)).unwrap();
    assert_eq!((r.from, r.to, r.sessions_lost), (A, B, Some(1234)));
    assert_eq!(o.owner_of(EXT), Some(B));
    assert_eq!(o.migrations()[0].stage, Stage::Aborted);
    let Some(Command::UpdateSwitch { diff, .. }) = o.poll_command() else {
        panic!("expected a switch update")
    };
    assert_eq!(diff.modify.len(), 2);
    assert!(matches!(
        o.poll_intervention(),
        Some(Intervention::Adopt {
            on: B,
            external: EXT,
            ..
        })
    ));
    assert_eq!(
        o.poll_intervention(),
        None,
        "nothing to release: A is the dead one"
    );
    assert_eq!(o.rehomes().len(), 1);
    assert!(o.rehome(t, EXT, InstanceId(9), None).is_err());
    // Rehoming to the owner resolves a split: every other instance lets go.
    o.rehome(t, EXT, B, None).unwrap();
    while o.poll_command().is_some() {}
    assert_eq!(
        o.poll_intervention(),
        Some(Intervention::Release {
            on: A,
            external: EXT
        })
    );
}

#[test]
fn a_restarted_controller_adopts_a_source_awaiting_its_cutover() {
    let t = Instant::from_secs(1);
    let id = MigrationId::with_epoch(A, 5, 3);
    let ev = MigrationEvent::AwaitingCutover {
        migration: id,
        external: EXT,
        to: B,
        algorithm: Algorithm::FreezeCopy,
    };
    // Ownership persisted before the redirect: redirect now, then cutover.
    let mut o = orch();
    o.handle_instance_event(t, A, &ev);
    let Some(Command::UpdateSwitch { token, .. }) = o.poll_command() else {
        panic!("expected a switch update")
    };
    o.handle_barrier(t, token);
    assert_eq!(
        o.poll_command(),
        Some(Command::CutoverDone {
            on: A,
            migration: id
        })
    );
    // Ownership persisted after it: only the cutover.
    let mut o = orch();
    o.rehome(t, EXT, B, None).unwrap();
    while o.poll_command().is_some() {}
    o.handle_instance_event(t, A, &ev);
    assert_eq!(
        o.poll_command(),
        Some(Command::CutoverDone {
            on: A,
            migration: id
        })
    );
    // From an instance that is not the id's source: ignored.
    let mut o = orch();
    o.handle_instance_event(t, B, &ev);
    assert_eq!(o.poll_command(), None);
}
