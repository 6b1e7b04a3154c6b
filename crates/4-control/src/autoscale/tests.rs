use super::*;
use std::collections::BTreeSet;

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i)
}

fn cfg() -> AutoscaleConfig {
    AutoscaleConfig {
        enabled: true,
        capacity_pps: 1000.0,
        capacity_sessions: 1_000_000,
        ..AutoscaleConfig::default()
    }
}

/// A toy cluster the policy steers: groups with a load each (1.0 = a node's capacity), owned
/// by nodes; migrations take `mig_ms`, node starts `start_ms`.
/// Instance ids from plain numbers.
fn ids(n: &[u16]) -> Vec<InstanceId> {
    n.iter().copied().map(InstanceId).collect()
}

struct World {
    groups: BTreeMap<Ipv4Addr, (InstanceId, f64)>,
    running: BTreeSet<InstanceId>,
    pending: Vec<(Instant, Action)>,
    mig_ms: u64,
    start_ms: u64,
    log: Vec<(Instant, Action)>,
}

impl World {
    fn new(groups: &[(u8, u16, f64)], running: &[u16]) -> World {
        World {
            groups: groups
                .iter()
                .map(|&(g, n, l)| (ip(g), (InstanceId(n), l)))
                .collect(),
            running: running.iter().copied().map(InstanceId).collect(),
            pending: Vec::new(),
            mig_ms: 500,
            start_ms: 1000,
            log: Vec::new(),
        }
    }

    fn node_load(&self, n: impl Into<InstanceId>) -> f64 {
        let n = n.into();
        self.groups.values().filter(|g| g.0 == n).map(|g| g.1).sum()
    }

    fn loads(&self) -> Vec<NodeLoad> {
        self.running
            .iter()
            .map(|&n| NodeLoad {
                node: n,
                pps: self.node_load(n) * 1000.0,
                sessions: 0,
                busy: 0.0,
                groups: self
                    .groups
                    .iter()
                    .filter(|(_, g)| g.0 == n)
                    .map(|(&e, g)| GroupLoad {
                        external: e,
                        pps: g.1 * 1000.0,
                        sessions: 0,
                    })
                    .collect(),
            })
            .collect()
    }

    fn scale(&mut self, f: f64) {
        for g in self.groups.values_mut() {
            g.1 *= f;
        }
    }

    /// Advances to `now`: ends what is due, reports load, takes the policy's actions.
    fn step(&mut self, a: &mut Autoscaler, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.0 <= now);
        self.pending = later;
        for (_, act) in due {
            match act {
                Action::StartNode { node } => {
                    self.running.insert(node);
                    a.handle_node_ready(now, node);
                }
                Action::Migrate { external, to, .. } => {
                    self.groups.get_mut(&external).expect("known group").0 = to;
                    a.handle_migration_done(now, external, true);
                }
                Action::StopNode { .. } => unreachable!("not scheduled"),
            }
        }
        a.handle_load(now, &self.loads());
        self.take(a, now);
    }

    fn take(&mut self, a: &mut Autoscaler, now: Instant) {
        while let Some(act) = a.poll_action() {
            self.log.push((now, act.clone()));
            match act {
                Action::StartNode { node } => {
                    assert!(!self.running.contains(&node), "start of a running node");
                    self.pending
                        .push((now + Duration::from_millis(self.start_ms), act));
                }
                Action::Migrate {
                    external, from, to, ..
                } => {
                    assert_eq!(self.groups[&external].0, from, "moved from its owner");
                    assert!(self.running.contains(&to), "to a running node");
                    self.pending
                        .push((now + Duration::from_millis(self.mig_ms), act));
                }
                Action::StopNode { node } => {
                    assert_eq!(self.node_load(node), 0.0, "stopped with load");
                    assert!(
                        self.groups.values().all(|g| g.0 != node),
                        "stopped with groups"
                    );
                    self.running.remove(&node);
                }
            }
        }
    }

    /// Runs `secs` seconds in 100 ms steps from `t0`; returns the end time.
    fn run(&mut self, a: &mut Autoscaler, t0: Instant, secs: u64) -> Instant {
        let mut t = t0;
        for _ in 0..secs * 10 {
            t = t + Duration::from_millis(100);
            self.step(a, t);
        }
        t
    }

    fn migrations(&self) -> usize {
        self.log
            .iter()
            .filter(|(_, a)| matches!(a, Action::Migrate { .. }))
            .count()
    }
}

const T0: Instant = Instant::from_secs(100);

#[test]
fn an_overload_must_last_sustain_before_a_group_moves() {
    let mut a = Autoscaler::new(cfg(), &ids(&[1, 2]), &ids(&[])).unwrap();
    let mut w = World::new(&[(1, 1, 0.45), (2, 1, 0.45), (3, 2, 0.1)], &[1, 2]);
    // Node 1 at 0.9 for 1.5 s (< sustain 2 s), then back to 0.7.
    w.run(&mut a, T0, 1);
    w.groups.get_mut(&ip(1)).unwrap().1 = 0.25;
    let t = w.run(&mut a, T0 + Duration::from_millis(1500), 10);
    assert_eq!(w.migrations(), 0, "a short peak moves nothing: {:?}", w.log);
    // Sustained: one group moves to node 2, and then all is quiet.
    w.groups.get_mut(&ip(1)).unwrap().1 = 0.45;
    w.run(&mut a, t, 30);
    assert_eq!(w.migrations(), 1, "{:?}", w.log);
    assert!(w.node_load(1) <= 0.6 && w.node_load(2) <= 0.6);
    assert_eq!(a.status().counters.migrations, 1);
}

#[test]
fn a_surge_scales_out_and_the_fall_scales_in() {
    let mut a = Autoscaler::new(cfg(), &ids(&[1]), &ids(&[2, 3])).unwrap();
    let groups: Vec<(u8, u16, f64)> = (1..=8).map(|g| (g, 1, 0.05)).collect();
    let mut w = World::new(&groups, &[1]);
    let t = w.run(&mut a, T0, 10);
    assert!(w.log.is_empty(), "0.4 on one node: nothing to do");
    // 5x surge: 2.0 of load on node 1 alone; standby nodes come into service.
    w.scale(5.0);
    let t = w.run(&mut a, t, 120);
    let in_service: Vec<InstanceId> = w.running.iter().copied().collect();
    assert_eq!(in_service, ids(&[1, 2, 3]), "{:?}", w.log);
    for n in [1, 2, 3] {
        assert!(
            w.node_load(n) <= 0.8 + 1e-9,
            "node {n} at {}",
            w.node_load(n)
        );
    }
    assert_eq!(a.status().counters.scale_outs, 2);
    // Load falls back: nodes are drained and stopped down to what the load needs.
    w.scale(0.2);
    w.run(&mut a, t, 300);
    assert_eq!(w.running.len(), 1, "{:?}", a.status());
    assert_eq!(a.status().counters.scale_ins, 2);
    let n = *w.running.iter().next().unwrap();
    assert!((w.node_load(n) - 0.4).abs() < 1e-9);
    assert_eq!(a.node_state(n), Some(NodeState::Active));
}

#[test]
fn overload_is_bounded_in_time_while_capacity_exists() {
    // Each node's load may exceed its capacity only until the policy has moved groups:
    // sustain + node start + one migration per group moved, with cool-downs between.
    let c = cfg();
    let mut a = Autoscaler::new(c.clone(), &ids(&[1, 2]), &ids(&[3, 4])).unwrap();
    let groups: Vec<(u8, u16, f64)> = (1..=12).map(|g| (g, 1 + u16::from(g % 2), 0.06)).collect();
    let mut w = World::new(&groups, &[1, 2]);
    let mut t = w.run(&mut a, T0, 5);
    w.scale(3.0); // 1.08 on each node: over capacity.
    let mut over_since: BTreeMap<InstanceId, Instant> = BTreeMap::new();
    let mut longest = Duration::ZERO;
    for _ in 0..1200 {
        t = t + Duration::from_millis(100);
        w.step(&mut a, t);
        for &n in &w.running {
            if w.node_load(n) > 1.0 {
                let s = *over_since.entry(n).or_insert(t);
                longest = longest.max(t.saturating_since(s));
            } else {
                over_since.remove(&n);
            }
        }
    }
    let groups_to_move = 6;
    let bound = Duration::from_millis(
        c.sustain_ms + w.start_ms + groups_to_move * (w.mig_ms + c.cooldown_ms + 100),
    );
    assert!(
        longest <= bound,
        "over capacity {longest:?} > bound {bound:?}"
    );
    for &n in &w.running {
        assert!(
            w.node_load(n) <= c.high + 1e-9,
            "node {n}: {}",
            w.node_load(n)
        );
    }
}

#[test]
fn noisy_load_does_not_flap() {
    let c = cfg();
    let mut a = Autoscaler::new(c.clone(), &ids(&[1, 2, 3]), &ids(&[4])).unwrap();
    let groups: Vec<(u8, u16, f64)> = (1..=12).map(|g| (g, 1 + u16::from(g % 3), 0.12)).collect();
    let mut w = World::new(&groups, &[1, 2, 3]);
    // Deterministic noise: each group's load wobbles +-40% around its base every step.
    let base: BTreeMap<Ipv4Addr, f64> = w.groups.iter().map(|(&e, g)| (e, g.1)).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut t = T0;
    for _ in 0..6000 {
        t = t + Duration::from_millis(100);
        for (e, g) in w.groups.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let wobble = (x % 800) as f64 / 1000.0 - 0.4;
            g.1 = base[e] * (1.0 + wobble);
        }
        w.step(&mut a, t);
    }
    // 10 minutes of noise around a 0.48 mean per node: the policy may react to a sustained
    // excursion, but never ping-pongs a group and never exceeds its rate.
    let moves: Vec<(Instant, Ipv4Addr, InstanceId, InstanceId)> = w
        .log
        .iter()
        .filter_map(|(at, a)| match a {
            Action::Migrate {
                external, from, to, ..
            } => Some((*at, *external, *from, *to)),
            _ => None,
        })
        .collect();
    for (i, m) in moves.iter().enumerate() {
        let in_minute = moves[i..]
            .iter()
            .take_while(|n| n.0 < m.0 + Duration::from_secs(60))
            .count();
        assert!(in_minute <= c.max_migrations_per_minute as usize);
        for n in &moves[i + 1..] {
            if n.1 == m.1 {
                assert!(
                    n.0 >= m.0 + Duration::from_millis(c.group_rest_ms),
                    "group {} moved again after {:?}",
                    m.1,
                    n.0.saturating_since(m.0)
                );
            }
        }
    }
    assert!(
        moves.len() <= 10,
        "{} migrations under noise: {moves:?}",
        moves.len()
    );
}

#[test]
fn rate_limit_holds_actions_back_and_counts_them() {
    let c = AutoscaleConfig {
        max_migrations_per_minute: 1,
        cooldown_ms: 0,
        ..cfg()
    };
    let mut a = Autoscaler::new(c, &ids(&[1, 2, 3]), &ids(&[])).unwrap();
    let mut w = World::new(
        &[
            (1, 1, 0.3),
            (2, 1, 0.3),
            (3, 1, 0.3),
            (4, 2, 0.0),
            (5, 3, 0.0),
        ],
        &[1, 2, 3],
    );
    w.run(&mut a, T0, 20);
    assert_eq!(w.migrations(), 1, "{:?}", w.log);
    assert!(a.status().counters.rate_limited > 0);
}

#[test]
fn a_single_hot_group_is_counted_not_moved() {
    let mut a = Autoscaler::new(cfg(), &ids(&[1, 2]), &ids(&[3])).unwrap();
    let mut w = World::new(&[(1, 1, 0.95), (2, 2, 0.1)], &[1, 2]);
    w.run(&mut a, T0, 20);
    assert!(
        w.log.is_empty(),
        "moving the only group moves the overload: {:?}",
        w.log
    );
    assert!(a.status().counters.overload_unrelieved > 0);
}

#[test]
fn failed_and_timed_out_actions_release_the_policy() {
    let c = cfg();
    let mut a = Autoscaler::new(c.clone(), &ids(&[1, 2]), &ids(&[])).unwrap();
    let w = World::new(&[(1, 1, 0.5), (2, 1, 0.4), (3, 2, 0.0)], &[1, 2]);
    a.handle_load(T0, &w.loads());
    let t = T0 + Duration::from_millis(c.sustain_ms);
    a.handle_load(t, &w.loads());
    let Some(Action::Migrate { external, .. }) = a.poll_action() else {
        panic!("expected a migration: {:?}", a.status());
    };
    a.handle_migration_done(t, external, false);
    assert_eq!(a.status().counters.migrations_failed, 1);
    assert!(a.status().in_flight.is_none());
    // After the cool-down it tries again; this time nobody answers.
    let t = t + Duration::from_millis(c.cooldown_ms);
    a.handle_load(t, &w.loads());
    assert!(matches!(a.poll_action(), Some(Action::Migrate { .. })));
    a.handle_timeout(t + Duration::from_millis(c.action_timeout_ms));
    assert_eq!(a.status().counters.timeouts, 1);
    assert!(a.status().in_flight.is_none());
}

#[test]
fn disabled_policy_does_nothing_and_bad_configs_are_refused() {
    let mut a = Autoscaler::new(AutoscaleConfig::default(), &ids(&[1, 2]), &ids(&[3])).unwrap();
    let w = World::new(&[(1, 1, 2.0), (2, 1, 2.0)], &[1, 2]);
    for s in 0..100 {
        a.handle_load(T0 + Duration::from_secs(s), &w.loads());
    }
    assert!(a.poll_action().is_none());
    for bad in [
        AutoscaleConfig { low: 0.7, ..cfg() },
        AutoscaleConfig { high: 1.5, ..cfg() },
        AutoscaleConfig {
            capacity_pps: 0.0,
            ..cfg()
        },
        AutoscaleConfig {
            min_nodes: 0,
            ..cfg()
        },
    ] {
        assert!(Autoscaler::new(bad, &ids(&[1]), &ids(&[])).is_err());
    }
    assert!(Autoscaler::new(cfg(), &ids(&[1]), &ids(&[1])).is_err());
}

#[test]
fn actions_are_spaced_by_the_cool_down() {
    let c = AutoscaleConfig {
        cooldown_ms: 2_000,
        max_migrations_per_minute: 60,
        ..cfg()
    };
    let mut a = Autoscaler::new(c.clone(), &ids(&[1, 2]), &ids(&[])).unwrap();
    let groups: Vec<(u8, u16, f64)> = (1..=10).map(|g| (g, 1, 0.1)).collect();
    let mut w = World::new(&groups, &[1, 2]);
    w.run(&mut a, T0, 60);
    let starts: Vec<Instant> = w
        .log
        .iter()
        .filter(|(_, a)| matches!(a, Action::Migrate { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert!(starts.len() >= 2, "{:?}", w.log);
    // Each migration takes mig_ms; the next starts no sooner than the cool-down after it.
    for p in starts.windows(2) {
        let gap = p[1].saturating_since(p[0]);
        assert!(
            gap >= Duration::from_millis(w.mig_ms + c.cooldown_ms),
            "{gap:?} between migrations"
        );
    }
    assert!(w.node_load(1) <= c.high + 1e-9);
}

#[test]
fn load_between_low_and_high_moves_nothing() {
    // Hysteresis: nodes wandering anywhere between `low` and `high` (and one node dipping
    // below `low` while another stays above it) trigger neither rebalancing nor scale-in.
    let c = cfg();
    let mut a = Autoscaler::new(c.clone(), &ids(&[1, 2]), &ids(&[3])).unwrap();
    let mut w = World::new(
        &[(1, 1, 0.2), (2, 1, 0.2), (3, 2, 0.2), (4, 2, 0.2)],
        &[1, 2],
    );
    let mut t = T0;
    for i in 0..600u32 {
        t = t + Duration::from_millis(100);
        // Node 1 swings 0.32..0.78, node 2 between 0.1 and 0.7, out of phase.
        let phase = f64::from(i % 100) / 100.0 * std::f64::consts::TAU;
        for g in [1, 2] {
            w.groups.get_mut(&ip(g)).unwrap().1 = 0.275 + 0.115 * phase.sin();
        }
        for g in [3, 4] {
            w.groups.get_mut(&ip(g)).unwrap().1 = 0.2 - 0.15 * phase.sin();
        }
        w.step(&mut a, t);
    }
    assert!(w.log.is_empty(), "{:?}", w.log);
    assert_eq!(a.status().counters, AutoscaleCounters::default());
}

#[test]
fn scale_in_drains_the_node_with_fewest_groups() {
    let mut a = Autoscaler::new(cfg(), &ids(&[1, 2]), &ids(&[])).unwrap();
    // Node 1: six small groups (0.12); node 2: one group (0.2), more loaded but cheaper to
    // empty.
    let mut groups: Vec<(u8, u16, f64)> = (1..=6).map(|g| (g, 1, 0.02)).collect();
    groups.push((7, 2, 0.2));
    let mut w = World::new(&groups, &[1, 2]);
    w.run(&mut a, T0, 30);
    assert_eq!(w.migrations(), 1, "{:?}", w.log);
    assert!(matches!(
        w.log.last().unwrap().1,
        Action::StopNode {
            node: InstanceId(2)
        }
    ));
    assert_eq!(w.running.iter().copied().collect::<Vec<_>>(), ids(&[1]));
}

#[test]
fn scale_in_packs_groups_onto_the_node_drained_last() {
    let mut a = Autoscaler::new(cfg(), &ids(&[1, 2, 3]), &ids(&[])).unwrap();
    // Node 1: four groups; nodes 2 and 3: one each, node 3 the least loaded active node.
    let mut groups: Vec<(u8, u16, f64)> = (1..=4).map(|g| (g, 1, 0.03)).collect();
    groups.push((5, 2, 0.05));
    groups.push((6, 3, 0.01));
    let mut w = World::new(&groups, &[1, 2, 3]);
    w.run(&mut a, T0, 60);
    // Nodes 3 and 2 are drained, each group moved once, straight onto node 1.
    assert_eq!(w.running.iter().copied().collect::<Vec<_>>(), ids(&[1]));
    assert_eq!(w.migrations(), 2, "{:?}", w.log);
    assert!(w.log.iter().all(|(_, act)| match act {
        Action::Migrate { to, .. } => *to == InstanceId(1),
        _ => true,
    }));
}
