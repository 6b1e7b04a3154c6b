//! The driver's side of a run: the planned faults carried out, the orchestrator's commands and
//! interventions executed on the instances and the switch, their events fed back.

use super::{
    A, Action, B, EXTERNAL, World, err, idx, mig_config, nat_config, other, params, timeouts,
};
use crate::nat_element::NatElement;
use crate::packet::PacketMeta;
use crate::sim::SimError;
use crate::switch::RuleSwitch;
use flowshift_control::orchestrator::{Command, Intervention, Orchestrator};
use flowshift_migration::{Instance, InstanceId, MigrationEvent};
use flowshift_nat::{GroupConfig, Nat};
use flowshift_wire::Instant;
use rand::RngExt;

impl World {
    fn set_links(&mut self) -> Result<(), SimError> {
        let [a, b] = self.alive;
        let want = [a, b, a && b, a && b && self.transfer_up];
        for (l, up) in self.links.into_iter().zip(want) {
            self.sim.set_link_up(l.0, up)?;
            self.sim.set_link_up(l.1, up)?;
        }
        Ok(())
    }

    fn with<R>(
        &mut self,
        on: InstanceId,
        f: impl FnOnce(&mut Instance<PacketMeta>, Instant) -> R,
    ) -> Result<Option<R>, String> {
        if !self.alive[idx(on)] {
            return Ok(None);
        }
        let now = self.sim.now();
        self.sim
            .poke::<NatElement, _>(self.nodes[idx(on)], |el, out| {
                let r = f(el.instance_mut(), now);
                el.flush(out);
                Some(r)
            })
            .map_err(err)
    }

    fn group_sessions(&self, on: InstanceId) -> u64 {
        let Some(el) = self.sim.element::<NatElement>(self.nodes[idx(on)]) else {
            return 0;
        };
        let nat = el.instance().nat();
        nat.group_id(EXTERNAL)
            .and_then(|g| nat.group_stats(g).ok())
            .map_or(0, |s| s.sessions as u64)
    }

    /// The controller/operator gives the group to `to` (see the module documentation).
    fn rehome(&mut self, to: InstanceId, lost: Option<u64>) -> Result<(), String> {
        let now = self.sim.now();
        if let Ok(r) = self.orch.rehome(now, EXTERNAL, to, lost) {
            self.sessions_lost += r.sessions_lost.unwrap_or(0);
        }
        self.commands()
    }

    pub(super) fn act(&mut self, a: Action) -> Result<(), String> {
        match a {
            Action::Crash(x) => {
                self.alive[idx(x)] = false;
                self.set_links().map_err(err)?;
            }
            Action::Detect(x, at_once) => {
                if at_once && self.alive[idx(other(x))] {
                    let owner = self.orch.owner_of(EXTERNAL).unwrap_or(A);
                    let (to, lost) = if owner == x {
                        (other(x), Some(self.group_sessions(x)))
                    } else {
                        (owner, None)
                    };
                    self.rehome(to, lost)?;
                }
            }
            Action::Restart(x, at_once) => {
                let epoch: u32 = self.epochs.random();
                let nat = Nat::new(nat_config(vec![])).map_err(err)?;
                let inst = Instance::with_meta(x, nat, mig_config(epoch)).map_err(err)?;
                let lost = self.group_sessions(x);
                self.sim
                    .poke::<NatElement, _>(self.nodes[idx(x)], |el, out| el.restart(inst, out))
                    .map_err(err)?;
                self.alive[idx(x)] = true;
                self.set_links().map_err(err)?;
                // The owner is re-asserted: adopted by the restarted instance if it still owns
                // the group (its state is lost), otherwise confirmed at the survivor.
                let owner = self.orch.owner_of(EXTERNAL).unwrap_or(A);
                let lost = (owner == x && !at_once).then_some(lost);
                self.rehome(owner, lost)?;
            }
            Action::TransferDown => {
                self.transfer_up = false;
                self.set_links().map_err(err)?;
            }
            Action::TransferUp => {
                self.transfer_up = true;
                self.set_links().map_err(err)?;
            }
            Action::ControllerRestart => {
                let groups = self.orch.groups().to_vec();
                self.orch = Orchestrator::new(self.topo.clone(), groups).map_err(err)?;
                self.orch.set_timeouts(timeouts());
                self.generation += 1;
            }
        }
        Ok(())
    }

    pub(super) fn commands(&mut self) -> Result<(), String> {
        let now = self.sim.now();
        while let Some(cmd) = self.orch.poll_command() {
            match cmd {
                Command::StartMigration(s) => {
                    let id = self
                        .with(s.on, |i, now| {
                            i.start_migration_at(
                                now,
                                s.external,
                                s.to,
                                s.algorithm,
                                params(s.algorithm),
                            )
                            .ok()
                        })?
                        .flatten();
                    self.orch.migration_started(now, s.external, id);
                }
                Command::UpdateSwitch { diff, token } => {
                    let t = self.generation << 32 | token;
                    self.sim
                        .poke::<RuleSwitch, _>(self.sw, |s, _| s.submit(now, diff, t))
                        .map_err(err)?;
                }
                Command::CutoverDone { on, migration } => {
                    self.with(on, |i, now| {
                        let _ = i.cutover_done(now, migration);
                    })?;
                }
            }
        }
        while let Some(iv) = self.orch.poll_intervention() {
            match iv {
                Intervention::Abort { on, migration } => {
                    self.with(on, |i, now| {
                        let _ = i.abort(now, migration);
                    })?;
                }
                Intervention::Adopt {
                    on,
                    external,
                    subscribers,
                } => {
                    let cfg = GroupConfig {
                        external,
                        subscribers,
                    };
                    self.with(on, |i, now| i.adopt_group(now, cfg).map(|_| ()))?
                        .transpose()
                        .map_err(err)?;
                }
                Intervention::Release { on, external } => {
                    let n = self.with(on, |i, now| i.release_group(now, external))?;
                    self.mappings_released += n.unwrap_or(0) as u64;
                }
            }
        }
        Ok(())
    }

    /// Feeds the instances' events and the switch's confirmations to the orchestrator.
    pub(super) fn feedback(&mut self) -> Result<(), String> {
        for x in [A, B] {
            if !self.alive[idx(x)] {
                continue;
            }
            let evs = self
                .sim
                .poke::<NatElement, _>(self.nodes[idx(x)], |el, _| el.take_events())
                .map_err(err)?;
            for (at, e) in evs {
                self.orch.handle_instance_event(at, x, &e);
                // Either side may be the one that reports the split (a source that could not
                // revert, a committed destination whose source fell silent).
                if let MigrationEvent::Aborted { split: true, .. } = e {
                    // The operator resolves a split: the owner keeps the group.
                    let owner = self.orch.owner_of(EXTERNAL).unwrap_or(A);
                    self.rehome(owner, None)?;
                }
            }
        }
        let confirmed = self
            .sim
            .poke::<RuleSwitch, _>(self.sw, |s, _| s.take_confirmed())
            .map_err(err)?;
        let now = self.sim.now();
        for (t, _) in confirmed {
            if t >> 32 == self.generation {
                self.orch.handle_barrier(now, t & 0xffff_ffff);
            }
        }
        Ok(())
    }
}
