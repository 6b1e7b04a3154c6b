//! Unit tests of the orchestrator's main path: start, redirect, barrier, cutover, refusals.

use super::*;
use crate::rules::Action;
use flowshift_migration::{MigrationEvent, Role};

pub(super) fn orch() -> Orchestrator {
    let topo = crate::rules::tests::topo();
    let groups = vec![GroupRoute {
        external: [203, 0, 113, 1].into(),
        subscribers: "100.64.0.0/24".parse().unwrap(),
        owner: InstanceId(0),
    }];
    Orchestrator::new(topo, groups).unwrap()
}

#[test]
fn a_migration_goes_start_redirect_barrier_cutover_done() {
    let mut o = orch();
    let ext: Ipv4Addr = [203, 0, 113, 1].into();
    let t = Instant::from_secs(1);
    o.request_migration(t, ext, InstanceId(1), Algorithm::FreezeCopy)
        .unwrap();
    assert!(matches!(
        o.request_migration(t, ext, InstanceId(1), Algorithm::FreezeCopy),
        Err(ControlError::Busy(_))
    ));
    assert_eq!(
        o.poll_command(),
        Some(Command::StartMigration(StartMigration {
            on: InstanceId(0),
            external: ext,
            to: InstanceId(1),
            algorithm: Algorithm::FreezeCopy
        }))
    );
    let id = MigrationId::new(InstanceId(0), 1);
    o.migration_started(t, ext, Some(id));
    assert_eq!(
        o.poll_command(),
        None,
        "nothing to do until the source is ready"
    );
    o.handle_instance_event(
        t,
        InstanceId(0),
        &MigrationEvent::ReadyForCutover {
            migration: id,
            group: 0,
        },
    );
    let Some(Command::UpdateSwitch { diff, token }) = o.poll_command() else {
        panic!("expected a switch update")
    };
    assert_eq!(diff.modify.len(), 2);
    assert!(
        diff.modify
            .iter()
            .all(|r| r.actions.last() == Some(&Action::Output(11)))
    );
    assert_eq!(o.owner_of(ext), Some(InstanceId(1)));
    o.handle_barrier(t, token + 99);
    assert_eq!(o.poll_command(), None, "an unknown barrier changes nothing");
    o.handle_barrier(t, token);
    assert_eq!(
        o.poll_command(),
        Some(Command::CutoverDone {
            on: InstanceId(0),
            migration: id
        })
    );
    o.handle_instance_event(
        t,
        InstanceId(0),
        &MigrationEvent::Completed {
            migration: id,
            role: Role::Source,
        },
    );
    assert_eq!(o.migrations()[0].stage, Stage::Done);
    assert!(
        o.request_migration(t, ext, InstanceId(0), Algorithm::StopCopy)
            .is_ok(),
        "can move it back"
    );
}

#[test]
fn only_the_source_completes_or_aborts_its_migration() {
    let mut o = orch();
    let ext: Ipv4Addr = [203, 0, 113, 1].into();
    let t = Instant::from_secs(1);
    o.request_migration(t, ext, InstanceId(1), Algorithm::FreezeCopy)
        .unwrap();
    let _ = o.poll_command();
    let id = MigrationId::new(InstanceId(0), 1);
    o.migration_started(t, ext, Some(id));
    let completed = MigrationEvent::Completed {
        migration: id,
        role: Role::Source,
    };
    let aborted = MigrationEvent::Aborted {
        migration: id,
        role: Role::Source,
        split: false,
        reason: flowshift_migration::proto::AbortReason::Requested,
    };
    // The destination (1) and a stranger (7) claim to be the source: ignored, counted.
    for from in [1, 7] {
        o.handle_instance_event(t, InstanceId(from), &completed);
        o.handle_instance_event(t, InstanceId(from), &aborted);
    }
    assert_eq!(o.events_not_from_source(), 4);
    assert_eq!(o.migrations()[0].stage, Stage::Running);
    assert_eq!(o.migrations()[0].finished_at, None);
    // An unknown migration id is not counted (nothing to attribute).
    let other = MigrationEvent::Completed {
        migration: MigrationId::new(InstanceId(0), 99),
        role: Role::Source,
    };
    o.handle_instance_event(t, InstanceId(1), &other);
    assert_eq!(o.events_not_from_source(), 4);
    // The source itself is heard.
    o.handle_instance_event(t, InstanceId(0), &aborted);
    assert_eq!(o.migrations()[0].stage, Stage::Aborted);
    assert_eq!(o.owner_of(ext), Some(InstanceId(0)));
    assert_eq!(o.events_not_from_source(), 4);
}

#[test]
fn refuses_unknown_groups_instances_and_no_op_moves() {
    let mut o = orch();
    let t = Instant::ZERO;
    assert!(matches!(
        o.request_migration(
            t,
            [203, 0, 113, 9].into(),
            InstanceId(1),
            Algorithm::StopCopy
        ),
        Err(ControlError::UnknownGroup(_))
    ));
    assert!(matches!(
        o.request_migration(
            t,
            [203, 0, 113, 1].into(),
            InstanceId(7),
            Algorithm::StopCopy
        ),
        Err(ControlError::UnknownInstance(InstanceId(7)))
    ));
    assert!(matches!(
        o.request_migration(
            t,
            [203, 0, 113, 1].into(),
            InstanceId(0),
            Algorithm::StopCopy
        ),
        Err(ControlError::AlreadyThere(_, InstanceId(0)))
    ));
}
