//! The controller snapshots and probe records turned into the simulator's record types:
//! samples, node events and migration records.

use super::*;

/// One sample per interval between snapshots: nodes in service and their load, offered load
/// and goodput from the probes, losses.
pub(super) fn samples(snaps: &[Snap], probes: &[probe::Analysis], capacity: f64) -> Vec<Sample> {
    let mut out = Vec::new();
    for w in snaps.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let dt = (b.t_s - a.t_s).max(1e-3);
        let (from_ms, to_ms) = (a.t_s * 1e3, b.t_s * 1e3);
        let in_bin = |ms: f64| ms >= from_ms && ms < to_ms;
        let sent: usize = probes
            .iter()
            .map(|p| {
                p.answers.iter().filter(|x| in_bin(x.sent_ms)).count()
                    + p.lost_ms.iter().filter(|&&ms| in_bin(ms)).count()
            })
            .sum();
        let back: usize = probes
            .iter()
            .map(|p| {
                let f = |x: &&probe::Answer| in_bin(x.sent_ms + x.rtt_ms);
                p.answers.iter().filter(f).count()
            })
            .sum();
        let lost: usize = probes
            .iter()
            .map(|p| p.lost_ms.iter().filter(|&&ms| in_bin(ms)).count())
            .sum();
        let (mut lost_migration, mut lost_overload) = (0, 0);
        let mut nodes = Vec::new();
        for (&k, e) in &b.status.nodes {
            let st = e.status.as_ref();
            let prev = a.status.nodes.get(&k).and_then(|e| e.status.as_ref());
            let same = |p: &&flowshift_control::api::NodeStatus| {
                st.is_some_and(|s| s.uptime_s > p.uptime_s)
            };
            let (mut pps, mut sessions) = (0.0, 0);
            if let (Some(s), Some(p)) = (st, prev.filter(same)) {
                let c = (&s.counters, &p.counters);
                pps = c.0.io.rx_packets.saturating_sub(c.1.io.rx_packets) as f64
                    / (s.uptime_s - p.uptime_s);
                lost_overload += c.0.io.rx_ring_drops.saturating_sub(c.1.io.rx_ring_drops);
                for (cause, v) in &c.0.losses {
                    lost_migration += v.saturating_sub(c.1.losses.get(cause).copied().unwrap_or(0));
                }
            }
            let owned: Vec<Ipv4Addr> = b
                .status
                .groups
                .iter()
                .filter(|g| g.owner == k)
                .map(|g| g.external)
                .collect();
            if let Some(s) = st {
                sessions = s
                    .groups
                    .iter()
                    .filter(|g| owned.contains(&g.external))
                    .map(|g| u64::from(g.sessions))
                    .sum();
            }
            let state = state_of(&b.status, k);
            let load = b
                .status
                .autoscale
                .as_ref()
                .and_then(|a| a.nodes.iter().find(|n| n.0 == k))
                .map_or(pps / capacity, |n| n.2);
            nodes.push(NodeSample {
                node: k,
                in_service: matches!(state, Some(NodeState::Active | NodeState::Draining)),
                state,
                pps,
                sessions,
                load,
                groups: owned.len() as u32,
                overload_drops: 0,
            });
        }
        out.push(Sample {
            t_s: b.t_s,
            in_service: nodes.iter().filter(|n| n.in_service).count() as u16,
            nodes,
            offered_pps: 2.0 * sent as f64 / dt,
            goodput_pps: 2.0 * back as f64 / dt,
            lost_overload,
            lost_migration,
            lost_other: lost as u64,
        });
    }
    out
}

/// Starts, entries into service and stops of nodes, from the policy's states.
pub(super) fn node_events(snaps: &[Snap]) -> Vec<NodeEvent> {
    let mut v = Vec::new();
    for w in snaps.windows(2) {
        for &k in w[1].status.nodes.keys() {
            let (a, b) = (state_of(&w[0].status, k), state_of(&w[1].status, k));
            let what = match (a, b) {
                (Some(NodeState::Standby), Some(NodeState::Starting)) => "start_requested",
                (Some(NodeState::Standby | NodeState::Starting), Some(NodeState::Active)) => {
                    "in_service"
                }
                (Some(NodeState::Active | NodeState::Draining), Some(NodeState::Standby)) => {
                    "stopped"
                }
                _ => continue,
            };
            v.push(NodeEvent {
                t_s: w[1].t_s,
                node: k,
                what,
            });
        }
    }
    v
}

/// The policy's migrations (the controller's list at the last snapshot), with each source's
/// report where one was fetched. The controller's clock is mapped onto the run's by its
/// uptime.
pub(super) fn migration_records(
    snaps: &[Snap],
    reports: &BTreeMap<usize, Value>,
) -> Vec<MigrationRecord> {
    let Some(last) = snaps.last() else {
        return Vec::new();
    };
    let offset = last.t_s - last.status.uptime_s;
    let at = |i: flowshift_wire::Instant| offset + i.as_secs_f64();
    let mut v = Vec::new();
    for (i, m) in last.status.migrations.iter().enumerate() {
        let r = reports.get(&i).unwrap_or(&Value::Null);
        let n = |k: &str| r[k].as_u64().unwrap_or(0) as u32;
        let lost_by_cause = r["packets_lost_by_cause"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        v.push(MigrationRecord {
            external: Some(m.external),
            from: m.from,
            to: m.to,
            algorithm: Some(m.algorithm),
            requested_s: at(m.requested_at),
            ended_s: m.finished_at.map(at),
            completed: m.stage == Stage::Done,
            states_moved: n("states_transferred"),
            states_expired_idle: n("states_expired_idle"),
            mappings_at_start: n("mappings_at_start"),
            max_freeze_ms: r["max_freeze_ms"].as_f64().unwrap_or(0.0),
            halted_ms: 0.0,
            lost_by_cause,
            bytes: r["bytes_transferred"].as_u64().unwrap_or(0),
        });
    }
    v
}
