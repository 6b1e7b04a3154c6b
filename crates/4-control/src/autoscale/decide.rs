//! The rules of [`Autoscaler`] (see the module documentation of `autoscale`).

use super::*;

/// The rate limit's window.
const MINUTE: Duration = Duration::from_secs(60);

impl Autoscaler {
    /// Applies the rules once, queueing at most one action (two when a scale-in starts: the
    /// node is marked draining and its first group moved).
    pub(super) fn decide(&mut self, now: Instant) {
        self.expire(now);
        if !self.cfg.enabled || self.in_flight.is_some() || now < self.quiet_until {
            return;
        }
        while self.started.front().is_some_and(|&t| now >= t + MINUTE) {
            self.started.pop_front();
        }
        if self.drain_step(now) {
            return;
        }
        if self.relieve_overload(now) {
            return;
        }
        if self.start_scale_in(now) {
            self.drain_step(now);
        }
    }

    fn sustained(&self, since: Option<Instant>, now: Instant) -> bool {
        since.is_some_and(|s| now >= s + ms(self.cfg.sustain_ms))
    }

    fn resting(&self, g: Ipv4Addr, now: Instant) -> bool {
        self.rested.get(&g).is_some_and(|&until| now < until)
    }

    /// The active node, other than `except`, where a group of load `g` ends lowest, if it
    /// ends at most at `limit` there.
    fn best_fit(&self, g: f64, except: InstanceId, limit: f64) -> Option<InstanceId> {
        self.nodes
            .iter()
            .filter(|(n, t)| **n != except && t.state == NodeState::Active)
            .map(|(&n, t)| (n, t.load + g))
            .filter(|&(_, after)| after <= limit)
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(n, _)| n)
    }

    /// Where a draining node's group of load `g` goes: the active node, other than `except`,
    /// that the scale-in rule would drain last (most groups, then most loaded) among those
    /// where it ends at most at `limit`. Packing the fullest node first keeps a group from
    /// being moved onto a node that is drained next (two migrations for one scale-in).
    fn drain_fit(&self, g: f64, except: InstanceId, limit: f64) -> Option<InstanceId> {
        self.nodes
            .iter()
            .filter(|(n, t)| **n != except && t.state == NodeState::Active)
            .filter(|(_, t)| t.load + g <= limit)
            .max_by(|a, b| {
                (a.1.groups.len().cmp(&b.1.groups.len()))
                    .then(a.1.load.total_cmp(&b.1.load))
                    .then(b.0.cmp(a.0))
            })
            .map(|(&n, _)| n)
    }

    fn record(&mut self, now: Instant, reason: Reason, action: Action) {
        if self.recent.len() == RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(Decision {
            at_ns: now.as_nanos(),
            reason,
            action: action.clone(),
        });
        self.actions.push_back(action);
    }

    /// Queues a migration unless the rate limit forbids it; true if queued.
    fn migrate(
        &mut self,
        now: Instant,
        reason: Reason,
        external: Ipv4Addr,
        from: InstanceId,
        to: InstanceId,
    ) -> bool {
        if self.started.len() >= self.cfg.max_migrations_per_minute as usize {
            self.counters.rate_limited += 1;
            return false;
        }
        self.started.push_back(now);
        self.counters.migrations += 1;
        let a = Action::Migrate {
            external,
            from,
            to,
            algorithm: self.cfg.algorithm,
        };
        self.in_flight = Some((a.clone(), now));
        self.record(now, reason, a);
        true
    }

    /// Rule 1: a draining node gives its next group away, or is stopped once empty. True if
    /// a node is draining (whether or not an action could be queued).
    fn drain_step(&mut self, now: Instant) -> bool {
        let Some((&node, t)) = self
            .nodes
            .iter()
            .find(|(_, t)| t.state == NodeState::Draining)
        else {
            return false;
        };
        let Some(&(g, gl)) = t
            .groups
            .iter()
            .filter(|(g, _)| !self.resting(*g, now))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            if t.groups.is_empty() {
                let t = self.nodes.get_mut(&node).expect("found above");
                t.state = NodeState::Standby;
                t.load = 0.0;
                t.under_since = None;
                self.counters.scale_ins += 1;
                self.quiet_until = now + ms(self.cfg.cooldown_ms);
                self.record(now, Reason::ScaleIn, Action::StopNode { node });
            }
            return true;
        };
        match self.drain_fit(gl, node, self.cfg.target) {
            Some(to) => {
                self.migrate(now, Reason::ScaleIn, g, node, to);
            }
            None => {
                // Load rose meanwhile: keep the node in service.
                let t = self.nodes.get_mut(&node).expect("found above");
                t.state = NodeState::Active;
                t.under_since = None;
            }
        }
        true
    }

    /// Rule 2: the most loaded node overloaded for `sustain` moves a group, or a standby
    /// node is started for it. True if an action was queued or the rate limit held one.
    fn relieve_overload(&mut self, now: Instant) -> bool {
        let over = self
            .nodes
            .iter()
            .filter(|(_, t)| t.state == NodeState::Active && self.sustained(t.over_since, now))
            .max_by(|a, b| a.1.load.total_cmp(&b.1.load).then(b.0.cmp(a.0)))
            .map(|(&n, t)| (n, t.load, t.groups.clone()));
        let Some((node, load, groups)) = over else {
            self.relieve_after_start = None;
            return false;
        };
        // A node with one group cannot be relieved by moving it: its load moves along.
        let splittable = groups.len() >= 2;
        if let Some((g, to)) = self.best_move(now, load, &groups, node, self.cfg.target) {
            self.relieve_after_start = None;
            self.migrate(now, Reason::Overload, g, node, to);
            return true;
        }
        // Nowhere to go: a standby node, if a group would fit on an empty one.
        let movable = groups
            .iter()
            .any(|&(g, gl)| splittable && !self.resting(g, now) && gl <= self.cfg.target);
        let standby = self
            .nodes
            .iter()
            .find(|(_, t)| t.state == NodeState::Standby)
            .map(|(&n, _)| n);
        match (movable, standby) {
            (true, Some(s)) if self.relieve_after_start != Some(node) => {
                let t = self.nodes.get_mut(&s).expect("found above");
                t.state = NodeState::Starting;
                self.relieve_after_start = Some(node);
                self.counters.scale_outs += 1;
                let a = Action::StartNode { node: s };
                self.in_flight = Some((a.clone(), now));
                self.record(now, Reason::ScaleOut, a);
                true
            }
            (_, None) => {
                // No standby left: settle for any destination that stays at most at `high`
                // and ends below the overloaded node's present load.
                if let Some((g, to)) = self.best_move(now, load, &groups, node, self.cfg.high) {
                    self.migrate(now, Reason::Overload, g, node, to);
                    return true;
                }
                self.counters.overload_unrelieved += 1;
                self.quiet_until = now + ms(self.cfg.cooldown_ms);
                false
            }
            _ => {
                self.counters.overload_unrelieved += 1;
                // Do not count the same overload every call: wait a cool-down.
                self.quiet_until = now + ms(self.cfg.cooldown_ms);
                false
            }
        }
    }

    /// The (group, destination) that leaves both ends of a move from `node` (load `load`)
    /// lowest, the destination at most at `limit` and both below `load` after it.
    fn best_move(
        &self,
        now: Instant,
        load: f64,
        groups: &[(Ipv4Addr, f64)],
        node: InstanceId,
        limit: f64,
    ) -> Option<(Ipv4Addr, InstanceId)> {
        if groups.len() < 2 {
            return None;
        }
        let mut best: Option<(Ipv4Addr, InstanceId, f64)> = None;
        for &(g, gl) in groups {
            if self.resting(g, now) {
                continue;
            }
            if let Some(to) = self.best_fit(gl, node, limit) {
                let worst = (load - gl).max(self.nodes[&to].load + gl);
                if worst < load && best.is_none_or(|b| worst < b.2) {
                    best = Some((g, to, worst));
                }
            }
        }
        best.map(|(g, to, _)| (g, to))
    }

    /// Rule 3: every active node under `low` for `sustain` and the load fits on one node
    /// fewer: the node with the fewest groups (each is a migration), the least loaded of
    /// those, starts draining. True if one did.
    fn start_scale_in(&mut self, now: Instant) -> bool {
        let active: Vec<(InstanceId, f64, bool, usize)> = self
            .nodes
            .iter()
            .filter(|(_, t)| t.state == NodeState::Active)
            .map(|(&n, t)| {
                (
                    n,
                    t.load,
                    self.sustained(t.under_since, now),
                    t.groups.len(),
                )
            })
            .collect();
        if active.len() <= self.cfg.min_nodes as usize || !active.iter().all(|a| a.2) {
            return false;
        }
        let total: f64 = active.iter().map(|a| a.1).sum();
        if total > self.cfg.target * (active.len() - 1) as f64 {
            return false;
        }
        let Some(&(victim, ..)) = active.iter().min_by(|a, b| {
            (a.3.cmp(&b.3))
                .then(a.1.total_cmp(&b.1))
                .then(b.0.cmp(&a.0))
        }) else {
            return false;
        };
        self.nodes.get_mut(&victim).expect("active").state = NodeState::Draining;
        true
    }
}
