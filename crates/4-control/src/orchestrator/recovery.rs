//! Recovery paths of the [`Orchestrator`]: abort, per-stage timeouts, rehoming a group whose
//! owner died, and adopting a migration a restarted controller did not know.
//!
//! Outcomes by stage (the switch decides who owns a group):
//!
//! | stage | `abort` | stage timeout |
//! |---|---|---|
//! | `Requested` | aborted at once (an id reported later is aborted on the source) | aborted |
//! | `Running` | `Abort` to both instances: the source reverts if nothing moved (group stays at the source) or completes forward (its `ReadyForCutover` is then followed: group at the destination) | abort sent; `abort_grace` later still running: marked aborted, group at the source (rehome it if the source is dead) |
//! | `Redirecting` / `Draining` | nothing to undo: the switch sends the group to the destination, the migration completes there | the switch update is re-sent (at most `redirect_retries`), then the migration is marked aborted with the group at the destination; a source silent in `Draining` is marked aborted likewise |

use super::{Command, ControlError, Orchestrator, Stage};
use crate::rules;
use flowshift_migration::{Algorithm, InstanceId, MigrationId};
use flowshift_wire::Instant;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Commands of the recovery paths, for the driver to carry out on instances. Kept apart from
/// [`Command`] so drivers that do not yet implement recovery keep working; drain
/// [`Orchestrator::poll_intervention`] like `poll_command`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intervention {
    /// Call `abort(migration)` on instance `on` (source: revert or complete forward;
    /// destination: drop it only if it holds nothing).
    Abort {
        /// Instance.
        on: InstanceId,
        /// Migration.
        migration: MigrationId,
    },
    /// Call `adopt_group` on `on` with this group: it becomes the owner (after `rehome`).
    Adopt {
        /// Instance.
        on: InstanceId,
        /// The group's external address.
        external: Ipv4Addr,
        /// The group's subscriber prefix.
        subscribers: Ipv4Net,
    },
    /// Call `release_group(external)` on `on`: the group went elsewhere (after `rehome`).
    Release {
        /// Instance.
        on: InstanceId,
        /// The group's external address.
        external: Ipv4Addr,
    },
}

/// Per-stage limits, in milliseconds (0 disables a limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageTimeouts {
    /// `Requested` without `migration_started` (default 10 s).
    pub requested_ms: u64,
    /// `Running` without `ReadyForCutover` or `Aborted` (default 600 s: longer than an idle
    /// phase's default `idle_max` of 300 s).
    pub running_ms: u64,
    /// After an abort was sent, how long the instances have to answer (default 10 s).
    pub abort_grace_ms: u64,
    /// `Redirecting` without the barrier reply (default 5 s).
    pub redirecting_ms: u64,
    /// Switch updates re-sent before giving up on a barrier (default 3).
    pub redirect_retries: u32,
    /// `Draining` without the source's `Completed` (default 30 s).
    pub draining_ms: u64,
}

impl Default for StageTimeouts {
    fn default() -> Self {
        StageTimeouts {
            requested_ms: 10_000,
            running_ms: 600_000,
            abort_grace_ms: 10_000,
            redirecting_ms: 5_000,
            redirect_retries: 3,
            draining_ms: 30_000,
        }
    }
}

/// What [`Orchestrator::abort`] found: where the group ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortStage {
    /// Before the redirect: the instances were told; the group stays at the source unless
    /// the source can no longer revert (then it completes forward to the destination).
    BeforeRedirect,
    /// After the redirect: the group is the destination's; the migration completes there.
    AfterRedirect,
}

/// A group moved to another instance without a transfer because its owner died.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rehome {
    /// The group.
    pub external: Ipv4Addr,
    /// The dead owner.
    pub from: InstanceId,
    /// The new owner.
    pub to: InstanceId,
    /// When.
    pub at: Instant,
    /// Sessions lost with the dead owner, from its last status (`None`: unknown).
    pub sessions_lost: Option<u64>,
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

impl Orchestrator {
    /// Next recovery command for the driver.
    pub fn poll_intervention(&mut self) -> Option<Intervention> {
        self.interventions.pop_front()
    }

    /// Sets the per-stage timeouts.
    pub fn set_timeouts(&mut self, t: StageTimeouts) {
        self.timeouts = t;
    }

    /// Every rehome so far, oldest first.
    pub fn rehomes(&self) -> &[Rehome] {
        &self.rehomes
    }

    /// Moves ownership of `external` to a new owner and computes the switch update; the
    /// migration `i` is in `Running`.
    pub(super) fn redirect(&mut self, now: Instant, i: usize) {
        let (external, to) = (self.migrations[i].external, self.migrations[i].to);
        let mut groups = self.groups.clone();
        if let Some(g) = groups.iter_mut().find(|g| g.external == external) {
            g.owner = to;
        }
        let Ok(new_table) = rules::table(&self.topo, &groups) else {
            return;
        };
        let diff = rules::diff(&self.table, &new_table);
        self.groups = groups;
        self.table = new_table;
        let token = self.token(i);
        let m = &mut self.migrations[i];
        m.stage = Stage::Redirecting;
        m.stage_since = now;
        m.redirect_sent_at = Some(now);
        self.commands
            .push_back(Command::UpdateSwitch { diff, token });
    }

    fn token(&mut self, i: usize) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.by_token.insert(token, i);
        token
    }

    pub(super) fn push_aborts(&mut self, id: MigrationId, from: InstanceId, to: InstanceId) {
        for on in [from, to] {
            self.interventions
                .push_back(Intervention::Abort { on, migration: id });
        }
    }

    fn active(&self, external: Ipv4Addr) -> Option<usize> {
        self.migrations.iter().rposition(|m| {
            m.external == external && !matches!(m.stage, Stage::Done | Stage::Aborted)
        })
    }

    fn finish(&mut self, now: Instant, i: usize, stage: Stage) {
        let m = &mut self.migrations[i];
        m.stage = stage;
        m.stage_since = now;
        m.finished_at = Some(now);
        self.by_token.retain(|_, v| *v != i);
    }

    /// Aborts the migration of `external` in progress, with the outcome of its stage (see the
    /// module table). `None` if no migration of the group is in progress.
    pub fn abort(&mut self, now: Instant, external: Ipv4Addr) -> Option<AbortStage> {
        let i = self.active(external)?;
        let m = &mut self.migrations[i];
        match m.stage {
            Stage::Requested => {
                // `migration_started` aborts it on the source if an id comes after all.
                m.abort_requested = true;
                self.finish(now, i, Stage::Aborted);
                Some(AbortStage::BeforeRedirect)
            }
            Stage::Running => {
                if !m.abort_requested {
                    m.abort_requested = true;
                    m.stage_since = now;
                    let (from, to) = (m.from, m.to);
                    if let Some(id) = m.migration {
                        self.push_aborts(MigrationId(id), from, to);
                    }
                }
                Some(AbortStage::BeforeRedirect)
            }
            _ => {
                m.abort_requested = true;
                Some(AbortStage::AfterRedirect)
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work next (`Instant::MAX`: none).
    pub fn next_timeout(&self) -> Instant {
        self.migrations
            .iter()
            .filter_map(|m| self.deadline(m).map(|d| m.stage_since + d))
            .min()
            .unwrap_or(Instant::MAX)
    }

    fn deadline(&self, m: &super::MigrationStatus) -> Option<Duration> {
        let t = &self.timeouts;
        match m.stage {
            Stage::Requested => ms(t.requested_ms),
            Stage::Running if m.abort_requested => ms(t.abort_grace_ms),
            Stage::Running => ms(t.running_ms),
            Stage::Redirecting => ms(t.redirecting_ms),
            Stage::Draining => ms(t.draining_ms),
            Stage::Done | Stage::Aborted => None,
        }
    }

    /// Acts on every migration stuck in its stage past its timeout (see the module table).
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.migrations.len() {
            let m = &self.migrations[i];
            let Some(d) = self.deadline(m) else {
                continue;
            };
            if now < m.stage_since + d {
                continue;
            }
            match m.stage {
                Stage::Requested => self.finish(now, i, Stage::Aborted),
                Stage::Running if m.abort_requested => self.finish(now, i, Stage::Aborted),
                Stage::Running => {
                    let external = m.external;
                    let _ = self.abort(now, external);
                }
                Stage::Redirecting if m.redirect_retries < self.timeouts.redirect_retries => {
                    // Re-assert the group's rules (the diff from the pre-redirect table).
                    let (external, from) = (m.external, m.from);
                    let mut old = self.groups.clone();
                    if let Some(g) = old.iter_mut().find(|g| g.external == external) {
                        g.owner = from;
                    }
                    let Ok(old_table) = rules::table(&self.topo, &old) else {
                        continue;
                    };
                    let diff = rules::diff(&old_table, &self.table);
                    self.by_token.retain(|_, v| *v != i);
                    let token = self.token(i);
                    let m = &mut self.migrations[i];
                    m.redirect_retries += 1;
                    m.stage_since = now;
                    self.commands
                        .push_back(Command::UpdateSwitch { diff, token });
                }
                Stage::Redirecting | Stage::Draining => self.finish(now, i, Stage::Aborted),
                Stage::Done | Stage::Aborted => {}
            }
        }
    }

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
    pub(super) fn awaiting_cutover(
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
        self.migrations.push(super::MigrationStatus {
            stage: Stage::Running,
            migration: Some(id.0),
            ..super::MigrationStatus::requested(now, external, from, to, algorithm)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::tests::orch;
    use flowshift_migration::{AbortReason, MigrationEvent, Role};

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
}
