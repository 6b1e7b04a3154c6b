//! Controller requests executed on the packet thread.

use super::Engine;
use flowshift_control::api::{NodeRequest, ReplyBody};
use flowshift_migration::{AbortOutcome, MigrationId};
use flowshift_wire::Instant;
use tracing::{info, warn};

impl Engine {
    /// Executes one controller request.
    pub fn command(&mut self, now: Instant, body: NodeRequest) -> Result<ReplyBody, String> {
        let r = self.execute(now, body);
        self.note_migrations();
        r
    }

    fn execute(&mut self, now: Instant, body: NodeRequest) -> Result<ReplyBody, String> {
        match body {
            NodeRequest::StartMigration {
                external,
                to,
                algorithm,
                params,
            } => {
                if self.eg.peers.mac_of(to).is_none() {
                    return Err(format!(
                        "node {to} is not a configured peer of node {}",
                        self.id
                    ));
                }
                let params = params.unwrap_or_else(|| self.params.clone());
                let id = self
                    .inst
                    .start_migration_at(now, external, to, algorithm, params)
                    .map_err(|e| format!("node {}: {e}", self.id))?;
                info!(migration = id.0, %external, %to, ?algorithm, "migration started");
                Ok(ReplyBody::Started { migration: id.0 })
            }
            NodeRequest::CutoverDone { migration } => self
                .inst
                .cutover_done(now, MigrationId(migration))
                .map(|()| ReplyBody::Ok)
                .map_err(|e| e.to_string()),
            NodeRequest::Abort { migration } => self
                .inst
                .abort(now, MigrationId(migration))
                .map(|o| ReplyBody::Aborted {
                    reverted: o == AbortOutcome::Reverted,
                })
                .map_err(|e| e.to_string()),
            NodeRequest::AdoptGroup {
                external,
                subscribers,
            } => {
                let cfg = flowshift_nat::GroupConfig {
                    external,
                    subscribers,
                };
                self.inst.adopt_group(now, cfg).map_err(|e| e.to_string())?;
                warn!(%external, %subscribers, "adopted group (its owner was re-homed here)");
                Ok(ReplyBody::Ok)
            }
            NodeRequest::ReleaseGroup { external } => {
                let sessions = self.inst.release_group(now, external);
                warn!(%external, sessions, "released group (re-homed elsewhere)");
                Ok(ReplyBody::Released { sessions })
            }
            NodeRequest::Status => Ok(ReplyBody::Status(Box::new(self.status(now)))),
            NodeRequest::Report { migration } => {
                let r = self
                    .inst
                    .report(MigrationId(migration))
                    .ok_or_else(|| format!("node {} knows no migration {migration}", self.id))?;
                serde_json::to_value(r)
                    .map(ReplyBody::Report)
                    .map_err(|e| e.to_string())
            }
        }
    }
}
