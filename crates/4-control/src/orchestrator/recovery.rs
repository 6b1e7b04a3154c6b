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

use super::{Command, Orchestrator, Stage};
use crate::rules;
use flowshift_migration::{InstanceId, MigrationId};
use flowshift_wire::Instant;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::time::Duration;

mod rehome;

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
}

#[cfg(test)]
mod tests;
