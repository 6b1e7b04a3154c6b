//! The node side of the core: node connections coming and going (hello, down), the
//! messages nodes send, stray migrations, and (re)sending `CutoverDone`.

use super::*;

impl Core {
    pub(super) fn node_of_conn(&self, conn: u64) -> Option<InstanceId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.link.as_ref().is_some_and(|l| l.conn == conn))
            .map(|(&id, _)| id)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn node_hello(
        &mut self,
        now: Instant,
        conn: u64,
        id: InstanceId,
        mac: [u8; 6],
        groups: &[Ipv4Addr],
        tx: mpsc::Sender<Vec<u8>>,
        peer: &str,
    ) {
        let refuse = match self.cfg.node(id) {
            None => Some(format!("node id {id} is not in the cluster configuration")),
            Some(n) if n.mac.0 != mac => Some(format!(
                "node {id} says its MAC is {}, the configuration says {}",
                crate::config::MacAddr(mac),
                n.mac
            )),
            Some(_) => None,
        };
        if let Some(why) = refuse {
            self.counters.nodes_refused += 1;
            warn!(%peer, "refusing node connection: {why}");
            return; // dropping `tx` closes the connection
        }
        // The hello's id is the one its certificate names (checked before it gets here), so
        // a second connection for a live node comes from the holder of that node's key: a
        // restarted node whose old connection is not yet known to be dead. The newest wins.
        if self.nodes.get(&id).is_some_and(|n| n.link.is_some()) {
            warn!(
                node = %id,
                "node reconnected; dropping its previous connection"
            );
            self.counters.node_connections_replaced += 1;
            self.node_down(now, id, "replaced by a new connection");
        }
        let owned: Vec<Ipv4Addr> = self
            .orch
            .groups()
            .iter()
            .filter(|g| g.owner == id)
            .map(|g| g.external)
            .filter(|e| !groups.contains(e))
            .collect();
        if !owned.is_empty() {
            warn!(node = %id, missing = ?owned, "node lacks groups the controller routes to it");
        }
        info!(node = %id, %peer, ?groups, "node connected");
        self.counters.nodes_accepted += 1;
        let node = self.nodes.entry(id).or_default();
        node.link = Some(NodeLink { conn, tx });
        node.status_pending = false;
        self.next_status_poll = now; // fresh status soon
    }

    /// Closes node `id`'s connection and settles its outstanding requests.
    pub(super) fn node_down(&mut self, now: Instant, id: InstanceId, why: &str) {
        let Some(link) = self.nodes.get_mut(&id).and_then(|n| n.link.take()) else {
            return;
        };
        self.counters.node_disconnects += 1;
        warn!(node = %id, why, "node disconnected");
        if let Some(n) = self.nodes.get_mut(&id) {
            n.status_pending = false;
        }
        let lost: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| p.conn == link.conn)
            .map(|(&r, _)| r)
            .collect();
        for req in lost {
            if let Some(p) = self.requests.remove(&req) {
                self.request_failed(now, p, "node disconnected");
            }
        }
    }

    pub(super) fn node_message(&mut self, now: Instant, id: InstanceId, msg: NodeToController) {
        match msg {
            NodeToController::Hello { .. } => {
                self.counters.node_lines_malformed += 1;
                self.node_down(now, id, "second hello on one connection");
            }
            NodeToController::Reply { req, result } => match self.requests.remove(&req) {
                Some(p) if p.node == id => self.request_done(now, p, result),
                other => {
                    if let Some(p) = other {
                        // Not this node's request: put it back, it may still be answered.
                        self.requests.insert(req, p);
                    }
                    self.counters.replies_unmatched += 1;
                    if let Ok(ReplyBody::Started { migration }) = result {
                        self.abort_stray(now, id, migration, "late start reply");
                    } else {
                        debug!(node = %id, req, "reply to no outstanding request");
                    }
                }
            },
            NodeToController::Event { at_ns, event } => {
                self.counters.node_events += 1;
                info!(node = %id, node_ns = at_ns, ?event, "migration event");
                // A source waiting for a cutover this controller does not know of (it restarted
                // before persisting the redirect) re-reports `AwaitingCutover`; the orchestrator
                // adopts that migration and finishes it (`orchestrator/recovery/rehome.rs`).
                let adopting = match &event {
                    MigrationEvent::AwaitingCutover { migration, .. } => {
                        (!self.knows(*migration)).then_some(*migration)
                    }
                    _ => None,
                };
                self.orch.handle_instance_event(now, id, &event);
                if let Some(m) = adopting.filter(|m| self.knows(*m)) {
                    self.counters.migrations_adopted += 1;
                    warn!(
                        node = %id,
                        migration = m.0,
                        "adopted a migration waiting for its cutover (controller restart): finishing it"
                    );
                }
            }
        }
    }

    fn knows(&self, migration: MigrationId) -> bool {
        self.orch
            .migrations()
            .iter()
            .any(|m| m.migration == Some(migration.0))
    }

    /// A migration runs on node `id` that the controller does not track (its start reply came
    /// after the controller gave up on it): abort it so the node does not wait forever.
    fn abort_stray(&mut self, now: Instant, id: InstanceId, migration: u64, why: &str) {
        if self.knows(MigrationId(migration)) || !self.aborting.insert(migration) {
            return;
        }
        warn!(
            node = %id,
            migration, why, "aborting a migration the controller does not track"
        );
        self.counters.stray_migrations_aborted += 1;
        // A failure is logged by `request`; nothing more can be done.
        let _ = self.request(
            now,
            id,
            NodeRequest::Abort { migration },
            Purpose::Abort { migration },
            ABORT_TIMEOUT,
        );
    }

    pub(super) fn send_cutover(
        &mut self,
        now: Instant,
        node: InstanceId,
        migration: u64,
        attempt: u32,
    ) {
        let connected = self.nodes.get(&node).is_some_and(|n| n.link.is_some());
        if !connected {
            if let Some(n) = self.nodes.get_mut(&node) {
                warn!(
                    %node,
                    migration, "node not connected; cutover queued until it reconnects"
                );
                n.cutovers.push((migration, attempt));
            }
            return;
        }
        // A failed send closed the connection and re-queued the cutover (`request_failed`).
        let _ = self.request(
            now,
            node,
            NodeRequest::CutoverDone { migration },
            Purpose::Cutover { migration, attempt },
            CUTOVER_TIMEOUT,
        );
    }
}
