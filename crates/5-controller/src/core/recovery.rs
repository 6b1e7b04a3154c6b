//! The controller's recovery paths: the state file (write-ahead of redirects), the
//! orchestrator's interventions (abort, adopt, release), `POST /abort` and `POST /rehome`.

use super::*;

impl Core {
    /// Writes the state file now (a no-op without one); the controller does this once at
    /// start, so an unwritable file stops it before anything depends on it.
    pub(crate) fn save_state(&mut self) -> Result<(), crate::store::StoreError> {
        let state = self.durable_state();
        if let Some(store) = self.store.as_mut()
            && store.save(&state)?
        {
            self.counters.state_saves += 1;
        }
        Ok(())
    }

    /// What the state file must hold now: every group's owner, and the migrations whose
    /// redirect was decided but whose source may not have had its cutover.
    pub(super) fn durable_state(&self) -> PersistedState {
        let mut migrations = self.resumed.clone();
        for m in self.orch.migrations() {
            if let (Stage::Redirecting | Stage::Draining, Some(id)) = (m.stage, m.migration) {
                migrations.push(PersistedMigration {
                    migration: id,
                    external: m.external,
                    from: m.from,
                    to: m.to,
                    stage: PersistedStage::Redirecting,
                });
            }
        }
        PersistedState {
            version: STATE_VERSION,
            owners: self
                .orch
                .groups()
                .iter()
                .map(|g| (g.external, g.owner))
                .collect(),
            migrations,
        }
    }

    /// Brings the state file up to date (a no-op when unchanged or not configured), then
    /// releases the switch updates that waited for it. Returns whether the file is current.
    pub(super) fn persist(&mut self) -> bool {
        match self.save_state() {
            Ok(()) => true,
            Err(e) => {
                self.counters.state_save_failures += 1;
                error!("cannot save the controller state: {e}; switch updates wait");
                false
            }
        }
    }

    /// Sends the held switch updates once the state file holds what they install.
    pub(super) fn release_updates(&mut self) {
        if self.held_updates.is_empty() || !self.persist() {
            return;
        }
        for (diff, token) in std::mem::take(&mut self.held_updates) {
            self.switch.update(&diff, token);
        }
    }

    /// Carries out the orchestrator's recovery steps (aborts after `abort` or a stage
    /// timeout, adopt/release after `rehome`).
    pub(super) fn intervene(&mut self, now: Instant) {
        while let Some(step) = self.orch.poll_intervention() {
            let (on, body, purpose) = match step {
                Intervention::Abort { on, migration } => (
                    on,
                    NodeRequest::Abort {
                        migration: migration.0,
                    },
                    Purpose::Abort {
                        migration: migration.0,
                    },
                ),
                Intervention::Adopt {
                    on,
                    external,
                    subscribers,
                } => (
                    on,
                    NodeRequest::AdoptGroup {
                        external,
                        subscribers,
                    },
                    Purpose::Recovery {
                        what: format!("adopt {external}"),
                    },
                ),
                Intervention::Release { on, external } => (
                    on,
                    NodeRequest::ReleaseGroup { external },
                    Purpose::Recovery {
                        what: format!("release {external}"),
                    },
                ),
            };
            let connected = self.nodes.get(&on).is_some_and(|n| n.link.is_some());
            if !connected {
                // A dead node holds nothing to release; anything else is reported.
                debug!(
                    node = %on,
                    ?body,
                    "recovery step for a disconnected node skipped"
                );
                continue;
            }
            // A failure is counted in `request_failed`.
            let _ = self.request(now, on, body, purpose, ABORT_TIMEOUT);
        }
    }

    /// The source answered (or will never answer) a cutover: a resumed migration is over.
    pub(super) fn cutover_settled(&mut self, migration: u64) {
        self.resumed.retain(|m| m.migration != migration);
    }

    /// `POST /abort`: the outcome depends on the stage (see `orchestrator/recovery.rs`).
    pub(super) fn abort(&mut self, now: Instant, group: Ipv4Addr) -> Reply {
        match self.orch.abort(now, group) {
            None => Reply::error(409, &format!("no migration of {group} in progress")),
            Some(stage) => {
                warn!(%group, ?stage, "migration abort requested");
                Reply::json(
                    200,
                    &serde_json::json!({ "group": group, "outcome": stage }),
                )
            }
        }
    }

    /// `POST /rehome`: only for a group whose owner is gone (a live owner's group moves with
    /// `migrate`); the sessions its last status reported are lost, and reported.
    pub(super) fn rehome(&mut self, now: Instant, group: Ipv4Addr, to: InstanceId) -> Reply {
        let connected = |id: InstanceId| self.nodes.get(&id).is_some_and(|n| n.link.is_some());
        let Some(owner) = self.orch.owner_of(group) else {
            return Reply::error(400, &format!("no group {group}"));
        };
        if connected(owner) && owner != to {
            return Reply::error(
                409,
                &format!(
                    "owner node {} is connected: move the group with migrate",
                    owner
                ),
            );
        }
        if !connected(to) {
            return Reply::error(409, &format!("node {to} is not connected"));
        }
        let lost = self
            .nodes
            .get(&owner)
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.groups.iter().find(|g| g.external == group))
            .map(|g| u64::from(g.sessions));
        match self.orch.rehome(now, group, to, lost) {
            Ok(r) => {
                self.counters.groups_rehomed += 1;
                warn!(%group, from = %r.from, %to, sessions_lost = ?r.sessions_lost,
                    "group re-homed from a dead node");
                Reply::json(200, &r)
            }
            Err(e) => Reply::error(400, &e.to_string()),
        }
    }
}
