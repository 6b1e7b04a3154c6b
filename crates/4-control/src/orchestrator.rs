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
use flowshift_migration::{Algorithm, InstanceId, MigrationId};
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

mod events;
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
}

#[cfg(test)]
pub(super) mod tests;
