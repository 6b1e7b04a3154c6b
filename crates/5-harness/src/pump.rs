//! Draining the instances into the links and the observer, and carrying out the
//! orchestrator's commands and interventions.

use crate::links::Net;
use crate::{A, B, Harness, HarnessConfig, HarnessError, HarnessStats, Observer};
use flowshift_control::orchestrator::{Command, Intervention};
use flowshift_control::rules;
use flowshift_migration::{Driver, InstanceId, MigrationEvent, Output};
use flowshift_wire::Instant;

impl<O: Observer> Harness<O> {
    /// Drains both instances (the driver contract), hands their events to the observer and
    /// the orchestrator, and carries out the orchestrator's commands, until nothing moves.
    pub fn pump(&mut self) {
        loop {
            let mut progress = false;
            for id in [A, B] {
                let mut sink = Sink {
                    from: id,
                    now: self.now,
                    cfg: &self.cfg,
                    chain_drop: &mut self.chain_drop,
                    net: &mut self.net,
                    obs: &mut self.obs,
                    stats: &mut self.stats,
                    progress: false,
                };
                let inst = if id == B { &mut self.b } else { &mut self.a };
                inst.drain(&mut sink);
                progress |= sink.progress;
            }
            for (on, e) in std::mem::take(&mut self.net.events) {
                progress = true;
                self.obs.event(self.now, on, &e);
                self.orch.handle_instance_event(self.now, on, &e);
            }
            progress |= self.run_commands();
            if !progress {
                return;
            }
        }
    }

    /// Carries out the orchestrator's commands; true if there were any.
    fn run_commands(&mut self) -> bool {
        let now = self.now;
        let mut any = false;
        while let Some(cmd) = self.orch.poll_command() {
            any = true;
            match cmd {
                Command::StartMigration(s) => {
                    let params = self.params.remove(&s.external).unwrap_or_default();
                    let r = self
                        .inst(s.on)
                        .start_migration_at(now, s.external, s.to, s.algorithm, params)
                        .map_err(HarnessError::from);
                    let external = s.external;
                    if r.is_err() {
                        self.stats.commands_refused += 1;
                    }
                    self.orch
                        .migration_started(now, external, r.as_ref().ok().copied());
                    self.started = Some(r);
                }
                Command::UpdateSwitch { diff, token } => {
                    rules::apply(&mut self.table, &diff);
                    let at = now + self.cfg.barrier_delay;
                    let seq = self.net.next_seq();
                    self.barriers.insert((at, seq), token);
                }
                Command::CutoverDone { on, migration } => {
                    if self.inst(on).cutover_done(now, migration).is_err() {
                        self.stats.commands_refused += 1;
                    }
                }
            }
        }
        while let Some(iv) = self.orch.poll_intervention() {
            any = true;
            match iv {
                // An instance that already finished it refuses; that is an answer, not a bug.
                Intervention::Abort { on, migration } => {
                    let _ = self.inst(on).abort(now, migration);
                }
                Intervention::Adopt {
                    on,
                    external,
                    subscribers,
                } => {
                    let cfg = flowshift_nat::GroupConfig {
                        external,
                        subscribers,
                    };
                    if self.inst(on).adopt_group(now, cfg).is_err() {
                        self.stats.commands_refused += 1;
                    }
                }
                Intervention::Release { on, external } => {
                    let n = self.inst(on).release_group(now, external);
                    self.stats.mappings_released += n as u64;
                }
            }
        }
        any
    }
}

/// Where one instance's drain goes: the links, the observer, the counters.
struct Sink<'a, O> {
    from: InstanceId,
    now: Instant,
    cfg: &'a HarnessConfig,
    chain_drop: &'a mut u64,
    net: &'a mut Net,
    obs: &'a mut O,
    stats: &'a mut HarnessStats,
    progress: bool,
}

impl<O: Observer> Driver<()> for Sink<'_, O> {
    fn output(&mut self, out: Output) {
        self.progress = true;
        let (now, from) = (self.now, self.from);
        match out {
            Output::Send { pkt, dir, .. } => self.obs.sent(now, from, dir, pkt),
            Output::Dropped { pkt, reason, .. } => self.obs.dropped(now, from, reason, pkt),
            Output::Chain { to, pkt, .. } => {
                self.obs.chained(now, from, to, &pkt);
                if to != A && to != B || to == from {
                    self.stats.unrouted += 1;
                } else if *self.chain_drop > 0 {
                    *self.chain_drop -= 1;
                    self.stats.chain_dropped += 1;
                } else if !self.net.chain(now + self.cfg.chain_delay, to, from, pkt) {
                    self.stats.queue_full += 1;
                }
            }
        }
    }

    fn transmit(&mut self, to: InstanceId, frame: Vec<u8>) {
        self.progress = true;
        self.obs.frame(self.now, self.from, to, frame.len());
        if to != A && to != B || to == self.from {
            self.stats.unrouted += 1;
            return;
        }
        self.net
            .transmit(self.now, self.cfg, self.from, to, frame, self.stats);
    }

    fn event(&mut self, event: MigrationEvent) {
        self.progress = true;
        self.net.events.push((self.from, event));
    }
}
