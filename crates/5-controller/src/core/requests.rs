//! Requests to nodes: sending one with its timeout, and acting on its answer or its
//! failure by purpose (start, cutover, abort, recovery, status, report).

use super::*;

impl Core {
    /// Sends a request; the answer arrives through `request_done` or `request_failed`.
    pub(super) fn request(
        &mut self,
        now: Instant,
        node: InstanceId,
        body: NodeRequest,
        purpose: Purpose,
        timeout: Duration,
    ) -> Result<u64, String> {
        let Some(link) = self.nodes.get(&node).and_then(|n| n.link.as_ref()) else {
            let why = format!("node {node} is not connected");
            self.request_failed(
                now,
                Pending {
                    node,
                    conn: 0,
                    deadline: now,
                    purpose,
                },
                &why,
            );
            return Err(why);
        };
        let req = self.next_req;
        self.next_req += 1;
        let line = encode_line(&ControllerToNode::Request { req, body });
        let conn = link.conn;
        match link.tx.try_send(line) {
            Ok(()) => {
                self.counters.requests_sent += 1;
                self.requests.insert(
                    req,
                    Pending {
                        node,
                        conn,
                        deadline: now + timeout,
                        purpose,
                    },
                );
                Ok(req)
            }
            Err(e) => {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.counters.node_queue_full += 1;
                        "outgoing queue full"
                    }
                    mpsc::error::TrySendError::Closed(_) => "connection closed",
                };
                self.node_down(now, node, why);
                let why = format!("node {node}: {why}");
                self.request_failed(
                    now,
                    Pending {
                        node,
                        conn,
                        deadline: now,
                        purpose,
                    },
                    &why,
                );
                Err(why)
            }
        }
    }

    pub(super) fn request_done(
        &mut self,
        now: Instant,
        p: Pending,
        result: Result<ReplyBody, String>,
    ) {
        let result = match result {
            Ok(body) => body,
            Err(e) => {
                self.counters.requests_failed += 1;
                warn!(node = %p.node, "node refused a request: {e}");
                match p.purpose {
                    Purpose::Start { external } => {
                        self.orch.migration_started(now, external, None);
                    }
                    Purpose::Status => {
                        if let Some(n) = self.nodes.get_mut(&p.node) {
                            n.status_pending = false;
                        }
                    }
                    Purpose::Report { reply } => {
                        // The receiver may have given up; nothing to do then.
                        let _ = reply.send(Reply::error(502, &format!("node {}: {e}", p.node)));
                    }
                    Purpose::Cutover { migration, .. } => self.cutover_settled(migration),
                    Purpose::Abort { migration } => {
                        self.aborting.remove(&migration);
                    }
                    Purpose::Recovery { what } => {
                        self.counters.recovery_failures += 1;
                        error!(node = %p.node, what, "recovery step refused: {e}");
                    }
                }
                return;
            }
        };
        match (p.purpose, result) {
            (Purpose::Start { external }, ReplyBody::Started { migration }) => {
                info!(%external, migration, "migration started");
                self.orch
                    .migration_started(now, external, Some(MigrationId(migration)));
            }
            (Purpose::Status, ReplyBody::Status(s)) => {
                if let Some((at, flows)) = self.switch.flow_snapshot() {
                    self.elastic.switch_flows(at, flows);
                }
                self.elastic.node_status(now, p.node, &s, &self.orch);
                if let Some(n) = self.nodes.get_mut(&p.node) {
                    n.status = Some(*s);
                    n.status_pending = false;
                }
            }
            (Purpose::Report { reply }, ReplyBody::Report(v)) => {
                let _ = reply.send(Reply::json(200, &v));
            }
            (Purpose::Cutover { migration, .. }, _) => {
                debug!(node = %p.node, migration, "cutover acknowledged");
                self.cutover_settled(migration);
            }
            (Purpose::Recovery { what }, body) => {
                info!(node = %p.node, what, ?body, "recovery step done");
            }
            (Purpose::Abort { migration }, body) => {
                self.aborting.remove(&migration);
                info!(node = %p.node, migration, ?body, "stray migration aborted");
            }
            (purpose, body) => {
                warn!(node = %p.node, ?body, "unexpected reply kind");
                // Settle what waits on it.
                self.request_failed(now, Pending { purpose, ..p }, "unexpected reply kind");
            }
        }
    }

    pub(super) fn request_failed(&mut self, now: Instant, p: Pending, why: &str) {
        match p.purpose {
            Purpose::Start { external } => {
                warn!(%external, node = %p.node, why, "migration start failed");
                self.orch.migration_started(now, external, None);
            }
            Purpose::Cutover { migration, attempt } => {
                let Some(n) = self.nodes.get_mut(&p.node) else {
                    return;
                };
                if attempt < MAX_CUTOVER_ATTEMPTS {
                    warn!(
                        node = %p.node,
                        migration, attempt, why, "cutover not acknowledged; will resend"
                    );
                    n.cutovers.push((migration, attempt + 1));
                } else {
                    self.counters.cutovers_given_up += 1;
                    warn!(
                        node = %p.node,
                        migration, why, "cutover not acknowledged; giving up"
                    );
                    self.cutover_settled(migration);
                }
            }
            Purpose::Status => {
                if let Some(n) = self.nodes.get_mut(&p.node) {
                    n.status_pending = false;
                }
            }
            Purpose::Report { reply } => {
                let _ = reply.send(Reply::error(503, &format!("node {}: {why}", p.node)));
            }
            Purpose::Recovery { what } => {
                self.counters.recovery_failures += 1;
                error!(node = %p.node, what, why, "recovery step failed");
            }
            Purpose::Abort { migration } => {
                self.aborting.remove(&migration);
                warn!(
                    node = %p.node,
                    migration, why, "abort of a stray migration failed"
                );
            }
        }
    }
}
