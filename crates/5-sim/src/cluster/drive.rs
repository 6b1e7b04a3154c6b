//! Driving a run: the warm-up, then the migration under the orchestrator (its commands carried
//! out on the instances and the switch, their events and confirmations fed back), then the rest.

use super::{A, B, ClusterConfig, ClusterError, EXTERNAL, Net, cfg_err, ms};
use crate::nat_element::NatElement;
use crate::switch::RuleSwitch;
use flowshift_control::orchestrator::Command;
use flowshift_migration::{MigrationEvent, MigrationId, Role};
use flowshift_wire::Instant;
use std::collections::BTreeMap;
use std::time::Duration;

/// Controller milestones (ms) by name.
pub(super) type Milestones = BTreeMap<&'static str, f64>;

/// Runs `net` to the end of `cfg.duration`, reporting progress; returns the controller
/// milestones and the migration's id (if it started).
pub(super) fn drive(
    net: &mut Net,
    cfg: &ClusterConfig,
    progress: &mut dyn FnMut(f64),
) -> Result<(Milestones, Option<MigrationId>), ClusterError> {
    let Net {
        sim,
        na,
        nb,
        sw,
        orch,
        ..
    } = net;
    let (na, nb, sw) = (*na, *nb, *sw);
    let mut controller = BTreeMap::new();
    let end = Instant::ZERO + cfg.duration;
    let start_at = Instant::ZERO + cfg.migrate_at;
    let mut next_progress = 0.0;
    while sim.now() < start_at {
        let t = (sim.now() + Duration::from_millis(50)).min(start_at);
        sim.run_until(t);
        if t.as_secs_f64() >= next_progress {
            progress(t.as_secs_f64());
            next_progress += 0.1;
        }
    }
    orch.request_migration(sim.now(), EXTERNAL, B, cfg.algorithm)
        .map_err(cfg_err)?;
    controller.insert("requested_ms", ms(sim.now()));
    let mut migration = None;
    while sim.now() < end {
        let now = sim.now();
        while let Some(cmd) = orch.poll_command() {
            match cmd {
                Command::StartMigration(s) => {
                    let node = if s.on == A { na } else { nb };
                    let params = cfg.params.clone();
                    let id = sim
                        .poke::<NatElement, _>(node, |el, out| el.start_migration(out, &s, params))
                        .map_err(cfg_err)?;
                    migration = id;
                    orch.migration_started(now, s.external, id);
                }
                Command::UpdateSwitch { diff, token } => {
                    sim.poke::<RuleSwitch, _>(sw, |s, _| s.submit(now, diff, token))
                        .map_err(cfg_err)?;
                    controller.insert("redirect_sent_ms", ms(now));
                }
                Command::CutoverDone { on, migration } => {
                    let node = if on == A { na } else { nb };
                    sim.poke::<NatElement, _>(node, |el, out| {
                        let _ = el.instance_mut().cutover_done(now, migration);
                        el.flush(out);
                    })
                    .map_err(cfg_err)?;
                }
            }
        }
        sim.run_until(now + cfg.control_step);
        for (node, id) in [(na, A), (nb, B)] {
            let evs = sim
                .poke::<NatElement, _>(node, |el, _| el.take_events())
                .map_err(cfg_err)?;
            for (at, e) in evs {
                if let MigrationEvent::Completed {
                    role: Role::Source, ..
                } = e
                {
                    controller.insert("done_ms", ms(at));
                }
                orch.handle_instance_event(at, id, &e);
            }
        }
        let confirmed = sim
            .poke::<RuleSwitch, _>(sw, |s, _| s.take_confirmed())
            .map_err(cfg_err)?;
        for (token, at) in confirmed {
            controller.insert("redirect_confirmed_ms", ms(at));
            orch.handle_barrier(sim.now(), token);
        }
        if sim.now().as_secs_f64() >= next_progress {
            progress(sim.now().as_secs_f64());
            next_progress += 0.1;
        }
    }
    progress(sim.now().as_secs_f64());
    Ok((controller, migration))
}
