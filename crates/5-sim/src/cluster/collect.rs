//! Collecting a run's results: the reports, the outside checks, delays and goodput.

use super::drive::Milestones;
use super::{ClusterConfig, ClusterError, ClusterRun, EXTERNAL, Invariants, Net, ms};
use crate::measure::Report;
use crate::nat_element::NatElement;
use flowshift_migration::{MigrationId, MigrationReport};
use flowshift_wire::Instant;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// The run's results from the finished `net`.
pub(super) fn collect(
    net: &Net,
    cfg: &ClusterConfig,
    controller: Milestones,
    migration: Option<MigrationId>,
) -> Result<ClusterRun, ClusterError> {
    let sim = &net.sim;
    let end = Instant::ZERO + cfg.duration;
    let report = sim.report();
    let goodput = sim.goodput(&net.sinks);
    let a: &NatElement = sim
        .element(net.na)
        .ok_or_else(|| ClusterError::Config("nat-a missing".into()))?;
    let b: &NatElement = sim
        .element(net.nb)
        .ok_or_else(|| ClusterError::Config("nat-b missing".into()))?;
    let source = migration.and_then(|id| a.instance().report(id));
    let destination = migration.and_then(|id| b.instance().report(id));
    let invariants = invariants(&report, a, b, source.as_ref());
    let mig_start = source
        .as_ref()
        .and_then(|r| r.phases.first())
        .map_or(cfg.migrate_at.as_secs_f64() * 1e3, |p| p.start_ms);
    let mig_end = controller.get("done_ms").copied().unwrap_or(ms(end));
    let samples = net.samples.borrow();
    let mut base: Vec<f64> = samples
        .iter()
        .filter(|(s, _)| (*s as f64 / 1e6) >= mig_start - 500.0 && (*s as f64 / 1e6) < mig_start)
        .map(|(_, d)| *d as f64 / 1e6)
        .collect();
    base.sort_by(f64::total_cmp);
    let baseline = percentile(&base, 0.5);
    let mut added: Vec<f64> = samples
        .iter()
        .filter(|(s, _)| (*s as f64 / 1e6) >= mig_start && (*s as f64 / 1e6) <= mig_end + 50.0)
        .map(|(_, d)| (*d as f64 / 1e6 - baseline).max(0.0))
        .collect();
    added.sort_by(f64::total_cmp);
    let mut drops_by_cause: BTreeMap<String, u64> = report.ledger.dropped.clone();
    drops_by_cause.retain(|k, _| !k.starts_with("element"));
    for (k, n) in &report.ledger.element_drops {
        drops_by_cause.insert(k.clone(), *n);
    }
    Ok(ClusterRun {
        config: cfg.clone(),
        goodput_before_mbps: mean_between(&goodput, mig_start / 2.0, mig_start),
        goodput_during_mbps: mean_between(&goodput, mig_start, mig_end + 1000.0),
        goodput,
        source,
        destination,
        controller,
        reordered_packets: sim.flows().iter().map(|f| f.reordered).sum(),
        drops_by_cause,
        baseline_delay_ms: baseline,
        added_delay_ms_max: added.last().copied().unwrap_or(0.0),
        added_delay_ms_p99: percentile(&added, 0.99),
        events: report.events,
        invariants,
    })
}

/// The outside checks: the ledger, both NATs' tables, and single ownership of the group's
/// mappings.
fn invariants(
    report: &Report,
    a: &NatElement,
    b: &NatElement,
    source: Option<&MigrationReport>,
) -> Invariants {
    let mut invariants = Invariants {
        ledger: report.check().map_err(|e| e.to_string()),
        nat_tables: a
            .instance()
            .nat()
            .check_invariants()
            .map_err(|e| format!("nat-a: {e}"))
            .and_then(|_| {
                b.instance()
                    .nat()
                    .check_invariants()
                    .map_err(|e| format!("nat-b: {e}"))
            }),
        single_owner: Ok(()),
    };
    // Each mapping of the group on exactly one instance: compare external ports held. The one
    // exception the protocol cannot avoid (Two Generals): after a channel failure, a batch
    // whose acknowledgement was lost may exist on both, as an identical replica (same internal
    // endpoint, same external port); the source reports those as in doubt. While a batch is in
    // flight the source's copy is frozen (it serves nothing): that is a move in progress.
    let held = |el: &NatElement| -> BTreeMap<(u8, u16), (SocketAddrV4, bool)> {
        let nat = el.instance().nat();
        let Some(g) = nat.group_id(EXTERNAL) else {
            return BTreeMap::new();
        };
        nat.group_mappings(g)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| nat.mapping_info(id).ok())
            .map(|m| ((m.proto, m.external_port), (m.internal, m.frozen)))
            .collect()
    };
    let (ha, hb) = (held(a), held(b));
    let in_doubt = source.map_or(0, |r| r.in_doubt_mappings as usize);
    let mut replicas = 0;
    for (k, (int_a, frozen_a)) in &ha {
        match hb.get(k) {
            Some((int_b, _)) if int_b != int_a => {
                invariants.single_owner = Err(format!(
                    "external {EXTERNAL} proto {} port {} maps {int_a} on A and {int_b} on B",
                    k.0, k.1
                ));
            }
            Some(_) if !frozen_a => replicas += 1,
            Some(_) => {}
            None => {}
        }
    }
    if invariants.single_owner.is_ok() && replicas > in_doubt {
        invariants.single_owner = Err(format!(
            "{replicas} mappings served by both instances, only {in_doubt} reported in doubt"
        ));
    }
    invariants
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mean_between(series: &[(f64, f64)], from_ms: f64, to_ms: f64) -> f64 {
    let v: Vec<f64> = series
        .iter()
        .filter(|(t, _)| *t >= from_ms && *t < to_ms)
        .map(|p| p.1)
        .collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}
