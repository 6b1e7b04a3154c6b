//! The controller's commands to an [`Instance`]: start a migration (by group or external
//! address), the cutover, abort, and a migration's report.

use super::{Instance, Mig};
use crate::config::Params;
use crate::proto::Algorithm;
use crate::report::MigrationReport;
use crate::{AbortOutcome, Error, InstanceId, MigrationId, Phase, Role};
use flowshift_nat::GroupId;
use flowshift_wire::Instant;

impl<M: Copy> Instance<M> {
    /// [`Instance::start_migration`] for the group whose external address is `external` (the
    /// form a controller's command names it in).
    pub fn start_migration_at(
        &mut self,
        now: Instant,
        external: std::net::Ipv4Addr,
        to: InstanceId,
        algorithm: Algorithm,
        params: Params,
    ) -> Result<MigrationId, Error> {
        let group = self
            .core
            .nat
            .group_id(external)
            .ok_or(Error::NoGroupAt(external))?;
        self.start_migration(now, group, to, algorithm, params)
    }

    /// Starts migrating `group` to instance `to` (this instance is the source). The
    /// destination learns of it from the `Prepare` frame this queues.
    pub fn start_migration(
        &mut self,
        now: Instant,
        group: GroupId,
        to: InstanceId,
        algorithm: Algorithm,
        params: Params,
    ) -> Result<MigrationId, Error> {
        params.validate(&self.core.cfg).map_err(Error::Config)?;
        if to == self.core.id {
            return Err(Error::SelfTarget);
        }
        if self.core.nat.group_config(group).is_err() {
            return Err(Error::NoGroup(group));
        }
        if self.group_busy(group) {
            return Err(Error::GroupBusy(group));
        }
        if self.running >= self.core.cfg.max_migrations as usize {
            return Err(Error::TooMany);
        }
        let id = MigrationId::with_epoch(self.core.id, self.epoch, self.next_counter);
        let m = Mig::start_source(&mut self.core, now, id, group, to, algorithm, params)?;
        self.next_counter = self.next_counter.wrapping_add(1);
        if self.next_counter == 0 {
            self.epoch = MigrationId::next_epoch(self.epoch);
            self.next_counter = 1;
        }
        self.migs.insert(id, m);
        self.after_call(now);
        Ok(id)
    }

    /// The switch now sends the group to the destination (barrier confirmed): start draining.
    /// Only for a source in [`Phase::AwaitCutover`].
    pub fn cutover_done(&mut self, now: Instant, migration: MigrationId) -> Result<(), Error> {
        let m = self
            .migs
            .get_mut(&migration)
            .ok_or(Error::UnknownMigration(migration))?;
        if m.role() != Role::Source || m.phase != Phase::AwaitCutover {
            return Err(Error::WrongPhase(m.phase));
        }
        m.src_cutover(&mut self.core, now);
        self.after_call(now);
        Ok(())
    }

    /// Abandons a running migration. On its source: reverts if nothing has moved, otherwise
    /// completes forward (see the crate documentation). On its destination: drops it (and
    /// tells the source) only while this instance holds no mapping of the group and no
    /// commit; otherwise leaves the decision to the source and returns `CompletingForward`.
    pub fn abort(&mut self, now: Instant, migration: MigrationId) -> Result<AbortOutcome, Error> {
        let m = self
            .migs
            .get_mut(&migration)
            .ok_or(Error::UnknownMigration(migration))?;
        if m.terminal {
            return Err(Error::WrongPhase(m.phase));
        }
        let outcome = match m.role() {
            Role::Source => m.src_abort(&mut self.core, now),
            Role::Destination => m.dst_abort(&mut self.core, now),
        };
        self.after_call(now);
        Ok(outcome)
    }

    /// The report of a migration this instance knows.
    pub fn report(&self, migration: MigrationId) -> Option<MigrationReport> {
        self.migs.get(&migration).map(Mig::report)
    }
}
