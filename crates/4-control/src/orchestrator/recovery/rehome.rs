//! Ownership moved without a transfer: a dead owner's group rehomed, and a migration a
//! restarted controller did not know adopted from its source's `AwaitingCutover`.

use super::{Intervention, Rehome};
use crate::orchestrator::{Command, ControlError, Orchestrator, Stage};
use crate::rules;
use flowshift_migration::{Algorithm, InstanceId, MigrationId};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;

impl Orchestrator {
    /// Gives the group `external` to instance `to` because its owner died: ownership and the
    /// switch rules move at once (no transfer), `to` adopts the group ([`Intervention::Adopt`]),
    /// every other instance but the dead owner drops what it holds of it
    /// ([`Intervention::Release`]; counted as lost there), a migration in progress is marked
    /// aborted. Rehoming to the current owner resolves a group left split. `sessions_lost` is what the dead owner's last status
    /// reported (`None`: unknown). Returns the record (also kept in [`rehomes`](Self::rehomes)).
    pub fn rehome(
        &mut self,
        now: Instant,
        external: Ipv4Addr,
        to: InstanceId,
        sessions_lost: Option<u64>,
    ) -> Result<Rehome, ControlError> {
        if !self.topo.instances.contains_key(&to) {
            return Err(ControlError::UnknownInstance(to));
        }
        let gi = self
            .groups
            .iter()
            .position(|g| g.external == external)
            .ok_or(ControlError::UnknownGroup(external))?;
        let dead = self.groups[gi].owner;
        let subscribers = self.groups[gi].subscribers;
        if let Some(i) = self.active(external) {
            self.finish(now, i, Stage::Aborted);
        }
        // Every other live instance lets go of whatever it holds of the group: a party of a
        // migration in progress or one that ended split, or one this controller never knew
        // about (it restarted). Releasing a group an instance does not have is a no-op.
        let others: Vec<InstanceId> = self.topo.instances.keys().copied().collect();
        for p in others {
            if p != to && p != dead {
                self.interventions
                    .push_back(Intervention::Release { on: p, external });
            }
        }
        let mut groups = self.groups.clone();
        groups[gi].owner = to;
        let new_table = rules::table(&self.topo, &groups)?;
        let diff = rules::diff(&self.table, &new_table);
        self.groups = groups;
        self.table = new_table;
        let token = self.next_token;
        self.next_token += 1;
        self.commands
            .push_back(Command::UpdateSwitch { diff, token });
        self.interventions.push_back(Intervention::Adopt {
            on: to,
            external,
            subscribers,
        });
        let r = Rehome {
            external,
            from: dead,
            to,
            at: now,
            sessions_lost,
        };
        self.rehomes.push(r.clone());
        Ok(r)
    }

    /// A source still waiting for its cutover reported again. A known migration's lost step is
    /// repeated (redirect, or `CutoverDone`); an unknown one (the controller restarted and was
    /// rebuilt from persisted ownership) is adopted: redirected if `from` still owns the group,
    /// or only confirmed with `CutoverDone` if ownership already says `to`.
    pub(in crate::orchestrator) fn awaiting_cutover(
        &mut self,
        now: Instant,
        from: InstanceId,
        id: MigrationId,
        external: Ipv4Addr,
        to: InstanceId,
        algorithm: Algorithm,
    ) {
        if id.source() != from {
            return;
        }
        if let Some(&i) = self.by_id.get(&id) {
            let m = &self.migrations[i];
            match m.stage {
                Stage::Running if m.from == from => self.redirect(now, i),
                Stage::Draining => self.commands.push_back(Command::CutoverDone {
                    on: from,
                    migration: id,
                }),
                _ => {}
            }
            return;
        }
        let Some(owner) = self.owner_of(external) else {
            return;
        };
        if self.active(external).is_some()
            || !self.topo.instances.contains_key(&to)
            || (owner != from && owner != to)
        {
            return;
        }
        self.migrations.push(crate::orchestrator::MigrationStatus {
            stage: Stage::Running,
            migration: Some(id.0),
            ..crate::orchestrator::MigrationStatus::requested(now, external, from, to, algorithm)
        });
        let i = self.migrations.len() - 1;
        self.by_id.insert(id, i);
        if owner == from {
            self.redirect(now, i);
        } else {
            let m = &mut self.migrations[i];
            m.stage = Stage::Draining;
            m.redirect_confirmed_at = Some(now);
            self.commands.push_back(Command::CutoverDone {
                on: from,
                migration: id,
            });
        }
    }
}
