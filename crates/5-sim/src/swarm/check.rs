//! The end-of-run invariants (see the module documentation of [`super`]).

use super::{A, B, EXTERNAL, SwarmRun, World, err, idx};
use crate::faults::FaultPlan;
use crate::nat_element::NatElement;
use flowshift_migration::{Algorithm, InstanceId};
use flowshift_nat::GroupMode;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// The end-of-run invariants (see the module documentation).
pub(super) fn check(w: World, seed: u64, plan: FaultPlan) -> Result<SwarmRun, String> {
    let mut v = Vec::new();
    let report = w.sim.report();
    if let Err(e) = report.check() {
        v.push(format!("ledger: {e}"));
    }
    let el = |x: InstanceId| -> Result<&NatElement, String> {
        w.sim
            .element::<NatElement>(w.nodes[idx(x)])
            .ok_or_else(|| "nat element missing".to_string())
    };
    let (ea, eb) = (el(A)?, el(B)?);
    let owner = w.orch.owner_of(EXTERNAL).unwrap_or(A);
    let mut held: [BTreeMap<(u8, u16), (SocketAddrV4, bool)>; 2] = Default::default();
    let mut in_doubt = 0u64;
    for (x, e) in [(A, ea), (B, eb)] {
        let inst = e.instance();
        let nat = inst.nat();
        if let Err(e) = nat.check_invariants() {
            v.push(format!("nat {x:?}: {e}"));
        }
        for (id, _, phase) in inst.migrations() {
            if !matches!(
                phase,
                flowshift_migration::Phase::Done | flowshift_migration::Phase::Aborted
            ) {
                v.push(format!(
                    "instance {x:?}: migration {id:?} still in {phase:?}"
                ));
            }
            in_doubt += inst.report(id).map_or(0, |r| r.in_doubt_mappings as u64);
        }
        if inst.counters().internal_errors > 0 {
            v.push(format!(
                "instance {x:?}: {} internal errors",
                inst.counters().internal_errors
            ));
        }
        let Some(g) = nat.group_id(EXTERNAL) else {
            if x == owner {
                v.push(format!("owner {x:?} has no group"));
            }
            continue;
        };
        let mode = nat.group_mode(g).map_err(err)?;
        let stats = nat.group_stats(g).map_err(err)?;
        if x == owner && mode != GroupMode::Active {
            v.push(format!("owner {x:?} serves the group {mode:?}"));
        }
        if x != owner && stats.mappings > 0 {
            v.push(format!("non-owner {x:?} holds {} mappings", stats.mappings));
        }
        held[idx(x)] = nat
            .group_mappings(g)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| nat.mapping_info(id).ok())
            .map(|m| ((m.proto, m.external_port), (m.internal, m.frozen)))
            .collect();
    }
    let mut replicas = 0u64;
    for (k, (ia, frozen)) in &held[0] {
        match held[1].get(k) {
            Some((ib, _)) if ib != ia => {
                v.push(format!("port {}/{} maps {ia} on A and {ib} on B", k.0, k.1))
            }
            Some(_) if !frozen => replicas += 1,
            _ => {}
        }
    }
    if replicas > in_doubt {
        v.push(format!(
            "{replicas} mappings on both, {in_doubt} reported in doubt"
        ));
    }
    let stages: Vec<String> = w
        .orch
        .migrations()
        .iter()
        .map(|m| m.stage.as_str().to_string())
        .collect();
    if w.orch
        .migrations()
        .iter()
        .any(|m| !matches!(m.stage.as_str(), "done" | "aborted"))
    {
        v.push(format!("controller: migration not finished: {stages:?}"));
    }
    let drops: BTreeMap<String, u64> = report.ledger.dropped.clone();
    let costly = plan.crashes() || plan.transfer_reset.is_some();
    if !costly {
        for (cause, n) in &drops {
            let ok = cause == "injected_loss"
                || (algorithm_halts(&plan) && cause == "element:group_halted");
            if *n > 0 && !ok {
                v.push(format!(
                    "{n} packets lost ({cause}) without a fault that explains it"
                ));
            }
        }
    }
    Ok(SwarmRun {
        seed,
        plan,
        violations: v,
        owner: owner.0,
        stages,
        sessions_lost: w.sessions_lost,
        mappings_released: w.mappings_released,
        drops,
        events: report.events,
    })
}

fn algorithm_halts(plan: &FaultPlan) -> bool {
    matches!(
        plan.algorithm,
        Some(Algorithm::StopCopy | Algorithm::PreCopy)
    )
}
