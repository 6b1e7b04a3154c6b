//! The elastic scenario: a surge makes the policy scale out, the fall makes it scale in, and
//! freeze-and-copy moves groups without losing a packet.

use flowshift_sim::Capacity;
use flowshift_sim::elastic::traffic::Profile;
use flowshift_sim::elastic::{ElasticConfig, ElasticRun, Scaling, run};
use std::time::Duration;

/// A smaller, shorter surge: 3 nodes of 2,000 packets/s, 32 groups, 5x from 5 s to 30 s.
fn small(scaling: Scaling, seed: u64) -> ElasticConfig {
    let mut c = ElasticConfig::surge(scaling, seed);
    c.nodes = 3;
    c.capacity = Capacity {
        pps: 2_000.0,
        burst: 40.0,
    };
    c.autoscale.capacity_pps = c.capacity.pps;
    c.traffic.base_arrivals = 9.0;
    c.traffic.profile = Profile::Step {
        rise_at: Duration::from_secs(5),
        ramp: Duration::from_secs(5),
        hold: Duration::from_secs(15),
        factor: 5.0,
    };
    c.start_delay = Duration::from_secs(1);
    c.duration = Duration::from_secs(70);
    c
}

/// The policy's documented bound on an overload: `sustain`, plus per node started its start
/// delay, plus per migration its duration and the cool-down, each decision up to one load
/// interval late.
fn overload_bound_s(r: &ElasticRun) -> f64 {
    let c = &r.config;
    let tick = c.load_interval.as_secs_f64();
    let starts = r
        .node_events
        .iter()
        .filter(|e| e.what == "in_service")
        .count() as f64;
    let moves: f64 = r
        .migrations
        .iter()
        .map(|m| m.ended_s.unwrap_or(f64::INFINITY) - m.requested_s)
        .map(|d| d + c.autoscale.cooldown_ms as f64 / 1e3 + tick)
        .sum();
    c.autoscale.sustain_ms as f64 / 1e3
        + tick
        + starts * (c.start_delay.as_secs_f64() + tick)
        + moves
}

#[test]
fn a_surge_scales_out_and_the_fall_scales_in_without_migration_loss() {
    let r = run(&small(Scaling::FreezeCopy, 3), &mut |_| {}).unwrap();
    let s = summary(&r);
    r.invariants.clone().unwrap();
    // Scale out during the surge, back to one node after the fall.
    assert!(r.max_in_service >= 2, "{s}");
    let last = r.samples.last().unwrap();
    assert_eq!(last.in_service, 1, "{s}");
    assert!(r.node_events.iter().any(|e| e.what == "stopped"), "{s}");
    let first_stop = r
        .node_events
        .iter()
        .find(|e| e.what == "stopped")
        .unwrap()
        .t_s;
    assert!(
        first_stop > 30.0,
        "scale-in only after the fall (30 s): {s}"
    );
    // Every move completed, none lost a packet.
    assert!(r.migrations.len() >= 4, "{s}");
    for m in &r.migrations {
        assert!(m.completed, "{s}");
        assert_eq!(m.lost_by_cause.values().sum::<u64>(), 0, "{s}");
        assert_eq!(
            m.algorithm,
            Some(flowshift_migration::Algorithm::FreezeCopy)
        );
    }
    assert_eq!(r.lost_migration, 0, "{s}");
    // No node offered more than its capacity for longer than the policy's bound.
    let bound = overload_bound_s(&r);
    for (node, &t) in &r.longest_overload_s {
        assert!(
            t <= bound,
            "node {node} overloaded {t} s > bound {bound} s: {s}"
        );
    }
    // Packets: every one delivered or dropped with a cause (the ledger), and overload is
    // the only sizeable loss.
    assert!(r.delivered > r.sent * 98 / 100, "{s}");
}

#[test]
fn without_scaling_the_surge_overloads_the_one_node() {
    let fc = run(&small(Scaling::FreezeCopy, 3), &mut |_| {}).unwrap();
    let none = run(&small(Scaling::None, 3), &mut |_| {}).unwrap();
    none.invariants.clone().unwrap();
    assert_eq!(none.max_in_service, 1);
    assert!(none.migrations.is_empty() && none.decisions.is_empty());
    assert!(
        none.lost_overload > 10 * fc.lost_overload.max(1),
        "no scaling lost {} to overload, freeze-copy scaling {}",
        none.lost_overload,
        fc.lost_overload
    );
    // The same workload (same seed) was offered to both until the first overload.
    assert!(
        none.longest_overload_s[&flowshift_migration::InstanceId(0)]
            > fc.longest_overload_s[&flowshift_migration::InstanceId(0)]
    );
}

#[test]
fn a_seed_reproduces_the_run() {
    let c = small(Scaling::StopCopy, 9);
    let a = serde_json::to_string(&run(&c, &mut |_| {}).unwrap()).unwrap();
    let b = serde_json::to_string(&run(&c, &mut |_| {}).unwrap()).unwrap();
    assert_eq!(a, b);
    let other = serde_json::to_string(&run(&small(Scaling::StopCopy, 10), &mut |_| {}).unwrap());
    assert_ne!(a, other.unwrap());
}

/// A readable account of a run for assertion messages.
fn summary(r: &ElasticRun) -> String {
    let mut s = format!(
        "{:?}: max nodes {}, sent {}, delivered {}, overload {}, migration {}, drops {:?}, longest overload {:?}, migrations {}, events {:?}\n",
        r.config.scaling,
        r.max_in_service,
        r.sent,
        r.delivered,
        r.lost_overload,
        r.lost_migration,
        r.drops_by_cause,
        r.longest_overload_s,
        r.migrations.len(),
        r.node_events
            .iter()
            .map(|e| (e.t_s, e.node, e.what))
            .collect::<Vec<_>>(),
    );
    for m in &r.migrations {
        s += &format!(
            "  {:?} {}->{} at {:.1} ended {:?} ok {} moved {} expired {} freeze {:.2} ms lost {:?}\n",
            m.external,
            m.from,
            m.to,
            m.requested_s,
            m.ended_s,
            m.completed,
            m.states_moved,
            m.states_expired_idle,
            m.max_freeze_ms,
            m.lost_by_cause
        );
    }
    s
}
