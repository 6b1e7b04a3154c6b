//! The controller's migration driver (sans-IO): it owns the group-to-instance map and the
//! switch table, turns an operator's "move group G to instance B" into commands for the
//! instances and the switch, and reacts to their events, step by step:
//!
//! 1. [`Command::StartMigration`] to the source (prepare, daisy chain, phases run there);
//!    the driver reports the migration id back with [`Orchestrator::migration_started`].
//! 2. On the source's `ReadyForCutover`: ownership moves to B and [`Command::UpdateSwitch`]
//!    carries the flow-mods (two MODIFY_STRICT) and a barrier token.
//! 3. On the barrier reply ([`Orchestrator::handle_barrier`]): [`Command::CutoverDone`] to the
//!    source, which drains stragglers to B and finishes with B.
//! 4. On `Completed` from the source the migration is done; on `Aborted` without a split the
//!    group stays (or goes back) with the source.
//!
//! Recovery (see `orchestrator/recovery.rs`): [`Orchestrator::abort`], per-stage timeouts
//! ([`Orchestrator::handle_timeout`]), [`Orchestrator::rehome`] for a group whose owner died,
//! and the adoption of a migration a restarted controller did not know
//! (`MigrationEvent::AwaitingCutover`). Their instance commands come from
//! [`Orchestrator::poll_intervention`].

use crate::rules::{self, GroupRoute, Rule, RuleDiff, Topology};
use flowshift_migration::{Algorithm, InstanceId, MigrationEvent, MigrationId, Role};
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

mod recovery;
pub use recovery::{AbortStage, Intervention, Rehome, StageTimeouts};

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Call `start_migration` on instance `on` for the group with this external address, then
    /// report the id with [`Orchestrator::migration_started`].
    StartMigration(StartMigration),
    /// Send these flow-mods, then a barrier; report its reply with
    /// [`Orchestrator::handle_barrier`]`(token)`.
    UpdateSwitch {
        /// Flow-mods.
        diff: RuleDiff,
        /// Barrier token.
        token: u64,
    },
    /// Call `cutover_done(migration)` on the source instance.
    CutoverDone {
        /// Source instance.
        on: InstanceId,
        /// Migration.
        migration: MigrationId,
    },
}

/// [`Command::StartMigration`]: which group to move where, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartMigration {
    /// Source instance.
    pub on: InstanceId,
    /// The group's external address.
    pub external: Ipv4Addr,
    /// Destination.
    pub to: InstanceId,
    /// Algorithm.
    pub algorithm: Algorithm,
}

/// Where a migration stands, as the controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Start requested; id not known yet.
    Requested,
    /// Running on the instances.
    Running,
    /// Switch update sent, waiting for the barrier.
    Redirecting,
    /// Switch confirmed; source draining.
    Draining,
    /// Finished.
    Done,
    /// Abandoned.
    Aborted,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 6] = [
        Stage::Requested,
        Stage::Running,
        Stage::Redirecting,
        Stage::Draining,
        Stage::Done,
        Stage::Aborted,
    ];

    /// The stage's snake_case name (as in JSON).
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Requested => "requested",
            Stage::Running => "running",
            Stage::Redirecting => "redirecting",
            Stage::Draining => "draining",
            Stage::Done => "done",
            Stage::Aborted => "aborted",
        }
    }
}

/// One migration's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// The group.
    pub external: Ipv4Addr,
    /// Source.
    pub from: InstanceId,
    /// Destination.
    pub to: InstanceId,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Stage.
    pub stage: Stage,
    /// Id, once known.
    pub migration: Option<u64>,
    /// Requested at (ns).
    pub requested_at: Instant,
    /// Switch redirect sent at.
    pub redirect_sent_at: Option<Instant>,
    /// Switch redirect confirmed at.
    pub redirect_confirmed_at: Option<Instant>,
    /// Finished at.
    pub finished_at: Option<Instant>,
    /// When the current stage began (the per-stage timeouts run from it).
    #[serde(default)]
    pub stage_since: Instant,
    /// An abort was requested (by the operator or a stage timeout) and sent to the instances.
    #[serde(default)]
    pub abort_requested: bool,
    /// Switch updates re-sent because their barrier did not come within the timeout.
    #[serde(default)]
    pub redirect_retries: u32,
}

impl MigrationStatus {
    /// A record at stage `Requested`, requested at `now`, with no id yet.
    pub fn requested(
        now: Instant,
        external: Ipv4Addr,
        from: InstanceId,
        to: InstanceId,
        algorithm: Algorithm,
    ) -> MigrationStatus {
        MigrationStatus {
            external,
            from,
            to,
            algorithm,
            stage: Stage::Requested,
            migration: None,
            requested_at: now,
            redirect_sent_at: None,
            redirect_confirmed_at: None,
            finished_at: None,
            stage_since: now,
            abort_requested: false,
            redirect_retries: 0,
        }
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No such group.
    #[error("no group with external address {0}")]
    UnknownGroup(Ipv4Addr),
    /// No such instance.
    #[error("no instance {0}")]
    UnknownInstance(InstanceId),
    /// Already owned by the target.
    #[error("group {0} is already on instance {1}")]
    AlreadyThere(Ipv4Addr, InstanceId),
    /// A migration of the group is in progress.
    #[error("group {0} is already migrating")]
    Busy(Ipv4Addr),
    /// Rules could not be computed.
    #[error(transparent)]
    Rules(#[from] rules::RuleError),
}

/// The controller's state. See the module documentation.
pub struct Orchestrator {
    topo: Topology,
    groups: Vec<GroupRoute>,
    table: Vec<Rule>,
    migrations: Vec<MigrationStatus>,
    by_id: BTreeMap<MigrationId, usize>,
    by_token: BTreeMap<u64, usize>,
    next_token: u64,
    commands: VecDeque<Command>,
    /// `Completed`/`Aborted` events ignored because they came from an instance other than
    /// the migration's source.
    events_not_from_source: u64,
    /// Recovery commands (abort, rehome); see [`Intervention`].
    interventions: VecDeque<Intervention>,
    timeouts: StageTimeouts,
    rehomes: Vec<Rehome>,
}

impl Orchestrator {
    /// A controller for this wiring and these groups (with their initial owners).
    pub fn new(topo: Topology, groups: Vec<GroupRoute>) -> Result<Self, ControlError> {
        let table = rules::table(&topo, &groups)?;
        Ok(Orchestrator {
            topo,
            groups,
            table,
            migrations: Vec::new(),
            by_id: BTreeMap::new(),
            by_token: BTreeMap::new(),
            next_token: 1,
            commands: VecDeque::new(),
            events_not_from_source: 0,
            interventions: VecDeque::new(),
            timeouts: StageTimeouts::default(),
            rehomes: Vec::new(),
        })
    }

    /// The switch table as the controller last computed it (install it at start-up).
    pub fn table(&self) -> &[Rule] {
        &self.table
    }

    /// Groups and their current owners.
    pub fn groups(&self) -> &[GroupRoute] {
        &self.groups
    }

    /// The owner of a group.
    pub fn owner_of(&self, external: Ipv4Addr) -> Option<InstanceId> {
        self.groups
            .iter()
            .find(|g| g.external == external)
            .map(|g| g.owner)
    }

    /// Every migration requested so far.
    pub fn migrations(&self) -> &[MigrationStatus] {
        &self.migrations
    }

    /// `Completed` and `Aborted` events ignored so far because the instance that sent them
    /// is not the migration's source (a destination, or a node naming another's migration).
    pub fn events_not_from_source(&self) -> u64 {
        self.events_not_from_source
    }

    /// Next command for the driver.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Asks to move a group to instance `to` with `algorithm`.
    pub fn request_migration(
        &mut self,
        now: Instant,
        external: Ipv4Addr,
        to: InstanceId,
        algorithm: Algorithm,
    ) -> Result<(), ControlError> {
        let g = self
            .groups
            .iter()
            .find(|g| g.external == external)
            .ok_or(ControlError::UnknownGroup(external))?;
        if !self.topo.instances.contains_key(&to) {
            return Err(ControlError::UnknownInstance(to));
        }
        if g.owner == to {
            return Err(ControlError::AlreadyThere(external, to));
        }
        let busy = self
            .migrations
            .iter()
            .any(|m| m.external == external && !matches!(m.stage, Stage::Done | Stage::Aborted));
        if busy {
            return Err(ControlError::Busy(external));
        }
        self.migrations.push(MigrationStatus::requested(
            now, external, g.owner, to, algorithm,
        ));
        self.commands
            .push_back(Command::StartMigration(StartMigration {
                on: g.owner,
                external,
                to,
                algorithm,
            }));
        Ok(())
    }

    /// The driver started the requested migration of `external` and got `id` back (or failed:
    /// `None`, which abandons the request).
    pub fn migration_started(&mut self, now: Instant, external: Ipv4Addr, id: Option<MigrationId>) {
        // The oldest request still waiting for its id (the driver runs starts in order),
        // including one aborted meanwhile: its id is aborted on the instances at once.
        let Some(i) = self.migrations.iter().position(|m| {
            m.external == external
                && m.migration.is_none()
                && (m.stage == Stage::Requested || (m.stage == Stage::Aborted && m.abort_requested))
        }) else {
            return;
        };
        let m = &mut self.migrations[i];
        match id {
            Some(id) => {
                m.migration = Some(id.0);
                self.by_id.insert(id, i);
                if m.stage == Stage::Requested {
                    m.stage = Stage::Running;
                    m.stage_since = now;
                } else {
                    let (from, to) = (m.from, m.to);
                    self.push_aborts(id, from, to);
                }
            }
            None => {
                m.abort_requested = false;
                m.stage = Stage::Aborted;
                m.finished_at = Some(now);
            }
        }
    }

    /// An event from instance `from`.
    pub fn handle_instance_event(&mut self, now: Instant, from: InstanceId, ev: &MigrationEvent) {
        match ev {
            MigrationEvent::ReadyForCutover { migration, .. } => {
                let Some(&i) = self.by_id.get(migration) else {
                    return;
                };
                if self.migrations[i].stage != Stage::Running || self.migrations[i].from != from {
                    return;
                }
                self.redirect(now, i);
            }
            MigrationEvent::AwaitingCutover {
                migration,
                external,
                to,
                algorithm,
            } => self.awaiting_cutover(now, from, *migration, *external, *to, *algorithm),
            MigrationEvent::Completed {
                migration,
                role: Role::Source,
            } => {
                let Some(&i) = self.by_id.get(migration) else {
                    return;
                };
                // Only the source ends its migration (the event's role is its own word).
                if self.migrations[i].from != from {
                    self.events_not_from_source += 1;
                    return;
                }
                self.migrations[i].stage = Stage::Done;
                self.migrations[i].finished_at = Some(now);
            }
            MigrationEvent::Aborted {
                migration,
                role: Role::Source,
                split,
                ..
            } => {
                let Some(&i) = self.by_id.get(migration) else {
                    return;
                };
                let m = &mut self.migrations[i];
                if m.from != from {
                    self.events_not_from_source += 1;
                    return;
                }
                if matches!(m.stage, Stage::Done | Stage::Aborted) {
                    return;
                }
                m.stage = Stage::Aborted;
                m.stage_since = now;
                m.finished_at = Some(now);
                // Before the redirect the source still owns the group; after it, the
                // destination does (the source aborts forward). A split group stays where the
                // switch points; an operator must resolve it.
                let _ = split;
            }
            _ => {}
        }
    }

    /// The switch confirmed the barrier `token`.
    pub fn handle_barrier(&mut self, now: Instant, token: u64) {
        let Some(i) = self.by_token.remove(&token) else {
            return;
        };
        let m = &mut self.migrations[i];
        if m.stage != Stage::Redirecting {
            return;
        }
        m.stage = Stage::Draining;
        m.stage_since = now;
        m.redirect_confirmed_at = Some(now);
        if let Some(id) = m.migration {
            self.commands.push_back(Command::CutoverDone {
                on: m.from,
                migration: MigrationId(id),
            });
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::rules::Action;

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
}
