//! The operator API's side of the core: answering `ApiRequest`s (status, migrations,
//! reports, switch, counters, `POST /migrate`).

use super::*;

impl Core {
    /// Answers an API request, or returns `None` when the answer comes later (a report
    /// proxied from a node).
    pub(super) fn api(
        &mut self,
        now: Instant,
        req: ApiRequest,
        reply: oneshot::Sender<Reply>,
    ) -> Option<Answer> {
        let r = match req {
            ApiRequest::Status => Reply::json(200, &self.cluster_status(now)),
            ApiRequest::Migrations => Reply::json(200, &self.orch.migrations()),
            ApiRequest::Switch => Reply::json(200, &self.switch_status()),
            ApiRequest::Counters => Reply::json(200, &self.counters()),
            ApiRequest::Migrate(m) => self.migrate(now, m),
            ApiRequest::Abort(a) => self.abort(now, a.group),
            ApiRequest::Rehome(r) => self.rehome(now, r.group, r.to),
            ApiRequest::Report(index) => match self.orch.migrations().get(index) {
                None => Reply::error(404, &format!("no migration #{index}")),
                Some(m) => match m.migration {
                    None => Reply::error(
                        409,
                        &format!("migration #{index} never started on its source (no id)"),
                    ),
                    Some(migration) => {
                        let source = m.from;
                        // On failure `request` has answered through `reply` already.
                        let _ = self.request(
                            now,
                            source,
                            NodeRequest::Report { migration },
                            Purpose::Report { reply },
                            REPORT_TIMEOUT,
                        );
                        return None;
                    }
                },
            },
        };
        Some(Answer { reply, r })
    }

    pub(super) fn migrate(&mut self, now: Instant, m: MigrateRequest) -> Reply {
        let connected = |id: InstanceId| self.nodes.get(&id).is_some_and(|n| n.link.is_some());
        if let Some(owner) = self.orch.owner_of(m.group)
            && owner != m.to
        {
            for (role, id) in [("source", owner), ("destination", m.to)] {
                if self.nodes.contains_key(&id) && !connected(id) {
                    return Reply::error(409, &format!("{role} node {id} is not connected"));
                }
            }
        }
        match self.orch.request_migration(now, m.group, m.to, m.algorithm) {
            Ok(()) => {
                let params = m.params.or_else(|| self.cfg.params.clone());
                self.start_params.insert(m.group, params);
                let index = self.orch.migrations().len() - 1;
                info!(group = %m.group, to = %m.to, algorithm = ?m.algorithm, index, "migration requested");
                Reply::json(
                    200,
                    &MigrateResponse {
                        index,
                        status: self.orch.migrations()[index].clone(),
                    },
                )
            }
            Err(e) => {
                let status = match e {
                    ControlError::UnknownGroup(_) | ControlError::UnknownInstance(_) => 400,
                    ControlError::AlreadyThere(..) | ControlError::Busy(_) => 409,
                    ControlError::Rules(_) => 500,
                };
                Reply::error(status, &e.to_string())
            }
        }
    }

    pub(super) fn cluster_status(&self, now: Instant) -> ClusterStatus {
        ClusterStatus {
            uptime_s: now.as_secs_f64(),
            switch_datapath_id: self.switch.datapath_id(),
            switch_rules: if self.switch.installed() {
                self.orch.table().len()
            } else {
                0
            },
            groups: self
                .orch
                .groups()
                .iter()
                .map(|g| GroupOwner {
                    external: g.external,
                    subscribers: g.subscribers,
                    owner: g.owner,
                })
                .collect(),
            nodes: self
                .nodes
                .iter()
                .map(|(&id, n)| {
                    (
                        id,
                        NodeEntry {
                            connected: n.link.is_some(),
                            status: n.status.clone(),
                        },
                    )
                })
                .collect(),
            migrations: self.orch.migrations().to_vec(),
            autoscale: Some(self.elastic.status()),
        }
    }

    pub(super) fn switch_status(&self) -> SwitchStatus {
        self.switch.status(self.orch.table().len())
    }

    pub(super) fn counters(&self) -> ControllerCounters {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.shared;
        ControllerCounters {
            inbox_full_waits: load(&s.inbox_full_waits),
            node_lines_malformed: self.counters.node_lines_malformed
                + load(&s.node_lines_malformed),
            api_refused_busy: load(&s.api_refused_busy),
            nodes_refused_tls: load(&s.nodes_refused_tls),
            nodes_refused_auth: load(&s.nodes_refused_auth),
            nodes_refused_busy: load(&s.nodes_refused_busy),
            switch_refused_tls: load(&s.switch_refused_tls),
            switch_refused_busy: load(&s.switch_refused_busy),
            http: s.http.snapshot(),
            node_events_not_from_source: self.orch.events_not_from_source(),
            autoscale: self.elastic.counters(),
            ..self.counters.clone()
        }
    }
}
