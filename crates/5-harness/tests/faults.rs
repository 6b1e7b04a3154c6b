//! The transfer protocol under loss, duplication and reordering; aborts; channel failure.
//! The invariant everywhere: a mapping never has two serving copies, no external port is bound
//! by two different mappings, and at the end each mapping lives on exactly one instance.

mod common;

use common::*;
use core::time::Duration;
use flowshift_harness::Faults;
use flowshift_migration::{
    AbortOutcome, AbortReason, Algorithm, LossCause, MigrationEvent, MigrationId, Params, Phase,
};
use flowshift_nat::GroupMode;
use proptest::prelude::*;

/// Flow ids used by these tests: 4 flows per subscriber address (so there are many port
/// blocks, hence many batches).
fn flow(i: u32) -> u32 {
    (i / 4) * 32 + i % 4
}

struct Traffic {
    n: u32,
    seq: Vec<u32>,
    sent: u64,
}

impl Traffic {
    /// `n` flows, established on A.
    fn establish(cl: &mut Cluster, n: u32) -> Traffic {
        let mut t = Traffic {
            n,
            seq: vec![0; n as usize],
            sent: 0,
        };
        for i in 0..n {
            t.send(cl, i);
        }
        t
    }

    /// One outbound packet of the i-th flow, and one inbound packet to its external port.
    fn send(&mut self, cl: &mut Cluster, i: u32) {
        let f = flow(i);
        let s = &mut self.seq[i as usize];
        cl.inject(out_pkt(f, *s));
        *s += 1;
        self.sent += 1;
        if let Some(p) = cl.port_of(f) {
            cl.inject(in_pkt(p, f, *s));
            *s += 1;
            self.sent += 1;
        }
    }

    /// Runs until `done`, sending one flow's pair of packets every 200 µs.
    fn run(&mut self, cl: &mut Cluster, limit: Duration, mut done: impl FnMut(&Cluster) -> bool) {
        let limit = cl.now + limit;
        let mut i = 0;
        while !done(cl) && cl.now < limit {
            self.send(cl, i % self.n);
            i += 1;
            cl.advance_by(Duration::from_micros(200)).unwrap();
        }
    }
}

fn both_done(id: MigrationId) -> impl FnMut(&Cluster) -> bool {
    move |cl: &Cluster| cl.completed(id, A) && cl.completed(id, B)
}

fn params() -> Params {
    Params {
        batch_size: 8,
        batches_in_flight: 2,
        idle_max: Duration::ZERO,
        precopy_min_round_interval: Duration::from_millis(5),
        precopy_max_rounds: 3,
        drain: Duration::from_millis(2),
        ..Params::default()
    }
}

fn lossy_run(seed: u64, algorithm: Algorithm) {
    let mut cl = cluster(seed);
    cl.obs.check_every_step = true;
    cl.cfg.faults = Faults {
        loss: 0.15,
        dup: 0.1,
        jitter: Duration::from_millis(3),
        cut_at: None,
    };
    let n = 60;
    let mut t = Traffic::establish(&mut cl, n);
    let ports = ext_ports(&cl.obs.delivered);
    let id = cl.start(algorithm, params());
    t.run(&mut cl, Duration::from_secs(60), both_done(id));
    cl.advance_by(Duration::from_millis(50)).unwrap();
    assert!(cl.completed(id, A) && cl.completed(id, B), "not completed");
    let r = cl.a.report(id).unwrap();
    let lost: u64 = r.packets_lost_by_cause.values().sum();
    if algorithm == Algorithm::FreezeCopy {
        assert_eq!(
            lost, 0,
            "freeze-copy lost packets: {:?}",
            r.packets_lost_by_cause
        );
    } else {
        assert_eq!(
            lost,
            r.packets_lost_by_cause[LossCause::GroupHalted.label()]
        );
    }
    assert_eq!(
        cl.obs.delivered.len() as u64 + lost,
        t.sent,
        "unaccounted packets"
    );
    assert_eq!(cl.b.nat().counters().total_drops(), 0);
    let after = ext_ports(&cl.obs.delivered);
    for (f, p) in &ports {
        assert_eq!(after.get(f), Some(p), "flow {f} changed port");
    }
    assert_in_order(&cl.obs.delivered);
    assert_eq!(cl.check_exactly_one_owner(), (0, n as usize));
    assert_eq!(r.states_transferred, n);
    assert_eq!(cl.a.counters().internal_errors, 0);
    assert_eq!(cl.b.counters().internal_errors, 0);
}

proptest! {
    // 3 x 100 seeds: loss, duplication and reordering on the transfer link.
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    fn freeze_copy_survives_loss_duplication_reordering(seed in any::<u64>()) {
        lossy_run(seed, Algorithm::FreezeCopy);
    }

    #[test]
    fn stop_copy_survives_loss_duplication_reordering(seed in any::<u64>()) {
        lossy_run(seed, Algorithm::StopCopy);
    }

    #[test]
    fn pre_copy_survives_loss_duplication_reordering(seed in any::<u64>()) {
        lossy_run(seed, Algorithm::PreCopy);
    }
}

#[test]
fn faults_actually_exercise_the_protocol() {
    // The same scenario as the property tests, checking the faults were real.
    let mut cl = cluster(42);
    cl.cfg.faults = Faults {
        loss: 0.15,
        dup: 0.1,
        jitter: Duration::from_millis(3),
        cut_at: None,
    };
    let mut t = Traffic::establish(&mut cl, 60);
    let id = cl.start(Algorithm::FreezeCopy, params());
    t.run(&mut cl, Duration::from_secs(60), both_done(id));
    let (ra, rb) = (cl.a.report(id).unwrap(), cl.b.report(id).unwrap());
    assert!(ra.channel.retransmissions > 0);
    assert!(ra.channel.duplicates + rb.channel.duplicates > 0);
    assert!(ra.channel.reordered + rb.channel.reordered > 0);
}

fn revert_checks(
    cl: &mut Cluster,
    id: MigrationId,
    n: u32,
    ports: &std::collections::HashMap<u32, u16>,
) {
    let ra = cl.a.report(id).unwrap();
    assert_eq!(ra.aborted, Some(AbortReason::Requested));
    assert!(!ra.split);
    let rb = cl.b.report(id).unwrap();
    assert_eq!(
        rb.aborted,
        Some(AbortReason::Requested),
        "destination not told"
    );
    let g = cl.group_on(A).expect("source keeps the group");
    assert_eq!(cl.a.nat().group_mode(g).unwrap(), GroupMode::Active);
    assert!(cl.group_on(B).is_none(), "destination kept the group");
    assert_eq!(cl.check_exactly_one_owner(), (n as usize, 0));
    // Traffic continues on A with the same ports.
    for i in 0..n {
        cl.inject(out_pkt(flow(i), 1_000_000));
    }
    let after = ext_ports(&cl.obs.delivered);
    for (f, p) in ports {
        assert_eq!(after.get(f), Some(p));
    }
}

#[test]
fn abort_before_commit_reverts_stop_copy() {
    let mut cl = cluster(21);
    let n = 100;
    let mut t = Traffic::establish(&mut cl, n);
    let ports = ext_ports(&cl.obs.delivered);
    let id = cl.start(Algorithm::StopCopy, params());
    // Some batches are imported on B (halted group), none committed.
    t.run(&mut cl, Duration::from_secs(1), |cl| {
        cl.b.report(id).is_some_and(|r| r.batches >= 3)
    });
    assert!(!cl.phase_reached(id, A, Phase::AwaitCutover));
    assert_eq!(cl.a.abort(cl.now, id), Ok(AbortOutcome::Reverted));
    cl.pump();
    t.run(&mut cl, Duration::from_millis(100), |_| false);
    revert_checks(&mut cl, id, n, &ports);
}

#[test]
fn abort_during_prepare_reverts_freeze_copy_and_serves_buffered_new_flows() {
    let mut cl = cluster(22);
    let n = 50;
    Traffic::establish(&mut cl, n);
    let ports = ext_ports(&cl.obs.delivered);
    let id = cl.start(Algorithm::FreezeCopy, params());
    // A new flow waits for PrepareAck; then the migration is called off.
    cl.inject(out_pkt(flow(n), 0));
    assert_eq!(
        cl.port_of(flow(n)),
        None,
        "new flow served before PrepareAck"
    );
    assert_eq!(cl.a.abort(cl.now, id), Ok(AbortOutcome::Reverted));
    cl.pump();
    assert!(
        cl.port_of(flow(n)).is_some(),
        "buffered packet not served after the revert"
    );
    cl.advance_by(Duration::from_millis(100)).unwrap();
    revert_checks(&mut cl, id, n + 1, &ports);
}

#[test]
fn abort_during_rounds_reverts_pre_copy() {
    let mut cl = cluster(23);
    let n = 80;
    let mut t = Traffic::establish(&mut cl, n);
    let ports = ext_ports(&cl.obs.delivered);
    let mut p = params();
    p.precopy_min_round_interval = Duration::from_millis(50);
    p.precopy_max_rounds = 10;
    let id = cl.start(Algorithm::PreCopy, p);
    t.run(&mut cl, Duration::from_secs(1), |cl| {
        cl.obs
            .events
            .iter()
            .any(|(_, e)| matches!(e, MigrationEvent::PrecopyRound { round: 1, .. }))
    });
    assert_eq!(cl.a.abort(cl.now, id), Ok(AbortOutcome::Reverted));
    cl.pump();
    t.run(&mut cl, Duration::from_millis(100), |_| false);
    revert_checks(&mut cl, id, n, &ports);
}

#[test]
fn abort_after_first_batch_completes_forward() {
    let mut cl = cluster(24);
    cl.obs.check_every_step = true;
    let n = 100;
    let mut t = Traffic::establish(&mut cl, n);
    let mut p = params();
    p.idle_max = Duration::from_secs(600);
    p.idle_rate_threshold = 0.0; // never leaves idle by rate
    let id = cl.start(Algorithm::FreezeCopy, p);
    // Idle phase with traffic chained to B (new flows), then abort: forward.
    t.run(&mut cl, Duration::from_millis(20), |_| false);
    cl.inject(out_pkt(flow(n), 0));
    let mut t2 = Traffic {
        n: n + 1,
        seq: {
            let mut s = t.seq.clone();
            s.push(1);
            s
        },
        sent: 0,
    };
    assert!(cl.phase_reached(id, A, Phase::Idle));
    assert_eq!(cl.a.abort(cl.now, id), Ok(AbortOutcome::CompletingForward));
    cl.pump();
    assert!(
        cl.phase_reached(id, A, Phase::FreezeCopy),
        "idle not cut short"
    );
    t2.run(&mut cl, Duration::from_secs(5), both_done(id));
    cl.advance_by(Duration::from_millis(20)).unwrap();
    let r = cl.a.report(id).unwrap();
    assert!(r.completed && r.forced_forward);
    assert_eq!(cl.check_exactly_one_owner(), (0, n as usize + 1));
    assert_eq!(r.packets_lost_by_cause.values().sum::<u64>(), 0);

    // And in freeze-and-copy, after a batch was acknowledged.
    let mut cl = cluster(25);
    cl.obs.check_every_step = true;
    let mut t = Traffic::establish(&mut cl, n);
    let id = cl.start(Algorithm::FreezeCopy, params());
    t.run(&mut cl, Duration::from_secs(1), |cl| {
        cl.a.report(id).is_some_and(|r| r.states_transferred > 0)
    });
    assert!(!cl.completed(id, A));
    assert_eq!(cl.a.abort(cl.now, id), Ok(AbortOutcome::CompletingForward));
    cl.pump();
    t.run(&mut cl, Duration::from_secs(5), both_done(id));
    cl.advance_by(Duration::from_millis(20)).unwrap();
    assert!(cl.a.report(id).unwrap().completed);
    assert_eq!(cl.check_exactly_one_owner(), (0, n as usize));
}

#[test]
fn channel_failure_before_commit_reverts_and_destination_forgets() {
    let mut cl = cluster(31);
    let n = 100;
    let mut t = Traffic::establish(&mut cl, n);
    let ports = ext_ports(&cl.obs.delivered);
    let id = cl.start(Algorithm::StopCopy, params());
    t.run(&mut cl, Duration::from_secs(1), |cl| {
        cl.b.report(id).is_some_and(|r| r.batches >= 2)
    });
    cl.cfg.faults.cut_at = Some(cl.now);
    // Retransmissions exhaust on A (reverts), B times out (drops its uncommitted copies).
    t.run(&mut cl, Duration::from_secs(30), |cl| {
        cl.b.report(id).is_some_and(|r| r.aborted.is_some())
            && cl.a.report(id).is_some_and(|r| r.aborted.is_some())
    });
    let ra = cl.a.report(id).unwrap();
    assert_eq!(ra.aborted, Some(AbortReason::ChannelFailed));
    let rb = cl.b.report(id).unwrap();
    assert_eq!(rb.aborted, Some(AbortReason::PeerTimeout));
    assert!(cl.group_on(B).is_none());
    assert_eq!(cl.check_exactly_one_owner(), (n as usize, 0));
    let after = ext_ports(&cl.obs.delivered);
    for (f, p) in &ports {
        assert_eq!(after.get(f), Some(p));
    }
}

#[test]
fn channel_failure_mid_freeze_copy_splits_without_losing_mappings() {
    let mut cl = cluster(32);
    let n = 100;
    let mut t = Traffic::establish(&mut cl, n);
    let id = cl.start(Algorithm::FreezeCopy, params());
    t.run(&mut cl, Duration::from_secs(1), |cl| {
        cl.a.report(id).is_some_and(|r| r.states_transferred >= 30)
    });
    cl.cfg.faults.cut_at = Some(cl.now);
    t.run(&mut cl, Duration::from_secs(30), |cl| {
        cl.b.report(id).is_some_and(|r| r.aborted.is_some())
            && cl.a.report(id).is_some_and(|r| r.aborted.is_some())
    });
    let ra = cl.a.report(id).unwrap();
    assert_eq!(ra.aborted, Some(AbortReason::ChannelFailed));
    assert!(ra.split);
    cl.a.nat().check_invariants().unwrap();
    cl.b.nat().check_invariants().unwrap();
    let ma = mappings(cl.a.nat(), EXT0);
    let mb = mappings(cl.b.nat(), EXT0);
    // No mapping lost; only the in-doubt batches can be on both.
    for i in 0..n {
        let (addr, port) = sub(flow(i));
        let k = (17u8, addr, port);
        assert!(ma.contains_key(&k) || mb.contains_key(&k), "flow {i} lost");
    }
    // Only an in-doubt batch (sent, acknowledgement lost in the cut) can be on both, and then
    // with the same translation on both.
    let both: Vec<_> = ma.keys().filter(|k| mb.contains_key(*k)).collect();
    assert!(
        both.len() as u32 <= ra.in_doubt_mappings,
        "{} on both",
        both.len()
    );
    for k in &both {
        assert_eq!(
            ma[*k].0, mb[*k].0,
            "in-doubt mapping {k:?} translated differently"
        );
    }
    let ports_a: std::collections::HashMap<(u8, u16), _> =
        ma.iter().map(|(k, v)| ((k.0, v.0), *k)).collect();
    for (k, v) in &mb {
        if let Some(ka) = ports_a.get(&(k.0, v.0)) {
            assert_eq!(ka, k, "external port {} bound for two mappings", v.0);
        }
    }
    assert!(ma.values().all(|v| !v.1), "mapping left frozen");
    // A still serves what it kept and chains misses to B.
    assert_eq!(
        cl.a.nat().group_mode(cl.group_on(A).unwrap()).unwrap(),
        GroupMode::Draining
    );
}
