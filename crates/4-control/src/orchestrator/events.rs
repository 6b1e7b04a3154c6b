//! The orchestrator's reactions to what the driver reports: a migration's id, instance
//! events, barrier replies.

use super::{Command, Orchestrator, Stage};
use flowshift_migration::{InstanceId, MigrationEvent, MigrationId, Role};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;

impl Orchestrator {
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
