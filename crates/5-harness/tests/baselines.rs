//! The two baselines: stop-and-copy (drops during the halt, counted) and pre-copy (rounds with
//! dirty, new and dead counts).

mod common;

use common::*;
use core::time::Duration;
use flowshift_migration::{Algorithm, LossCause, MigrationEvent, Params, Phase, RoundReport};
use flowshift_nat::DropReason;

#[test]
fn stop_copy_drops_packets_during_the_halt_and_counts_them() {
    let mut cl = cluster(3);
    cl.obs.check_every_step = true;
    let n = 300u32;
    let mut seq = vec![0u32; n as usize];
    let mut sent = 0u64;
    for f in 0..n {
        cl.inject(out_pkt(f, 0));
        seq[f as usize] = 1;
        sent += 1;
    }
    let before = ext_ports(&cl.obs.delivered);
    cl.advance_by(Duration::from_millis(10)).unwrap();
    let params = Params {
        batch_size: 32,
        batches_in_flight: 4,
        drain: Duration::from_millis(2),
        ..Params::default()
    };
    let id = cl.start(Algorithm::StopCopy, params);
    let limit = cl.now + Duration::from_secs(2);
    let mut step = 0u32;
    while !cl.completed(id, B) && cl.now < limit {
        for k in 0..2 {
            let f = (step * 2 + k) % n;
            cl.inject(out_pkt(f, seq[f as usize]));
            seq[f as usize] += 1;
            sent += 1;
            let p = before[&f];
            cl.inject(in_pkt(p, f, seq[f as usize]));
            seq[f as usize] += 1;
            sent += 1;
        }
        step += 1;
        cl.advance_by(Duration::from_micros(50)).unwrap();
    }
    cl.advance_by(Duration::from_millis(5)).unwrap();
    assert!(cl.completed(id, A) && cl.completed(id, B));
    let r = cl.a.report(id).unwrap();
    let halted = r.packets_lost_by_cause[LossCause::GroupHalted.label()];
    assert!(halted > 0, "no packet arrived during the halt");
    assert_eq!(
        halted,
        cl.a.nat().counters().drops_of(DropReason::GroupHalted),
        "report and NAT counters disagree"
    );
    // Every injected packet was either delivered or dropped because of the halt, and each
    // dropped one was handed back with its reason.
    assert_eq!(cl.obs.delivered.len() as u64 + halted, sent);
    assert_eq!(cl.obs.dropped.len() as u64, halted);
    assert!(
        cl.obs
            .dropped
            .iter()
            .all(|&(i, r)| i == A && r == DropReason::GroupHalted)
    );
    assert_eq!(cl.a.nat().counters().total_drops(), halted);
    assert_eq!(cl.b.nat().counters().total_drops(), 0);
    assert!(r.halted_ms > 0.0 && r.max_freeze_ms == r.halted_ms);
    assert_eq!(r.states_transferred, n);
    assert_eq!(r.records, n as u64);
    let names: Vec<Phase> = r.phases.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        vec![
            Phase::Prepare,
            Phase::StopCopy,
            Phase::AwaitCutover,
            Phase::Drain,
            Phase::Done
        ]
    );
    let after = ext_ports(&cl.obs.delivered);
    for (f, p) in &before {
        assert_eq!(after.get(f), Some(p), "flow {f} changed port");
    }
    assert_in_order(&cl.obs.delivered);
    assert_eq!(cl.check_exactly_one_owner(), (0, n as usize));
}

fn rounds(cl: &Cluster) -> Vec<RoundReport> {
    cl.obs
        .events
        .iter()
        .filter_map(|(_, e)| match *e {
            MigrationEvent::PrecopyRound {
                round,
                copied,
                dirty,
                new,
                dead,
                last,
                ..
            } => Some(RoundReport {
                round,
                copied,
                dirty,
                new,
                dead,
                records: copied,
                last,
            }),
            _ => None,
        })
        .collect()
}

#[test]
fn pre_copy_reports_dirty_and_new_mappings_per_round() {
    let mut cl = cluster(5);
    cl.obs.check_every_step = true;
    let n = 200u32;
    let mut seq = vec![0u32; n as usize + 10];
    for f in 0..n {
        cl.inject(out_pkt(f, 0));
        seq[f as usize] = 1;
    }
    cl.advance_by(Duration::from_millis(10)).unwrap();
    let params = Params {
        batch_size: 32,
        batches_in_flight: 4,
        precopy_min_round_interval: Duration::from_millis(100),
        precopy_stop_threshold: 5,
        precopy_max_rounds: 10,
        drain: Duration::from_millis(2),
        ..Params::default()
    };
    let id = cl.start(Algorithm::PreCopy, params);
    let limit = cl.now + Duration::from_secs(5);
    // Round 0 done: touch 30 flows and open 10 new ones before round 1 starts.
    assert!(cl.advance_until_rounds(limit, 1));
    for f in 0..30 {
        cl.inject(out_pkt(f, seq[f as usize]));
        seq[f as usize] += 1;
    }
    for f in n..n + 10 {
        cl.inject(out_pkt(f, 0));
        seq[f as usize] = 1;
    }
    // Round 1 done: touch 3 flows only (below the threshold: the final round follows).
    assert!(cl.advance_until_rounds(limit, 2));
    for f in 100..103 {
        cl.inject(out_pkt(f, seq[f as usize]));
        seq[f as usize] += 1;
    }
    cl.advance_until(limit, |ev| {
        ev.iter()
            .any(|(i, e)| *i == B && matches!(e, MigrationEvent::Completed { .. }))
    });
    cl.advance_by(Duration::from_millis(5)).unwrap();
    assert!(cl.completed(id, A) && cl.completed(id, B));
    let rs = rounds(&cl);
    let summary: Vec<(u32, u32, u32, u32, u32, bool)> = rs
        .iter()
        .map(|r| (r.round, r.copied, r.dirty, r.new, r.dead, r.last))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 200, 0, 200, 0, false),
            (1, 40, 30, 10, 0, false),
            (2, 3, 3, 0, 0, false),
            (3, 0, 0, 0, 0, true),
        ]
    );
    let r = cl.a.report(id).unwrap();
    assert_eq!(r.precopy_rounds.len(), 4);
    assert_eq!(r.states_transferred, n + 10);
    assert_eq!(r.records, 243);
    // No traffic during the final halt: nothing lost.
    assert_eq!(cl.a.nat().counters().total_drops(), 0);
    assert_eq!(cl.check_exactly_one_owner(), (0, n as usize + 10));
    ext_ports(&cl.obs.delivered);
}

#[test]
fn pre_copy_deletes_mappings_that_died_between_rounds() {
    let mut cl = cluster(9);
    let (n_long, n_dead) = (30u32, 20u32);
    let mut seq = vec![0u32; (n_long + n_dead) as usize];
    let t0 = cl.now;
    for f in 0..n_long + n_dead {
        cl.inject(out_pkt(f, 0));
        seq[f as usize] = 1;
    }
    cl.advance(t0 + Duration::from_secs(100)).unwrap();
    let params = Params {
        batch_size: 16,
        precopy_min_round_interval: Duration::from_secs(210),
        precopy_stop_threshold: 0,
        precopy_max_rounds: 2,
        drain: Duration::from_millis(2),
        ..Params::default()
    };
    let id = cl.start(Algorithm::PreCopy, params);
    // Long flows are refreshed every 60 s; the others expire (UDP, 300 s) before round 1.
    let mut s = 100u64;
    while !cl.completed(id, B) && s < 1000 {
        if s.is_multiple_of(60) {
            for f in 0..n_long {
                cl.inject(out_pkt(f, seq[f as usize]));
                seq[f as usize] += 1;
            }
        }
        s += 1;
        cl.advance(t0 + Duration::from_secs(s)).unwrap();
    }
    cl.advance_by(Duration::from_millis(10)).unwrap();
    assert!(cl.completed(id, A) && cl.completed(id, B));
    let summary: Vec<(u32, u32, u32, u32, u32, bool)> = rounds(&cl)
        .iter()
        .map(|r| (r.round, r.copied, r.dirty, r.new, r.dead, r.last))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 50, 0, 50, 0, false),
            (1, 30, 30, 0, 20, false),
            (2, 30, 30, 0, 0, true),
        ]
    );
    assert_eq!(cl.check_exactly_one_owner(), (0, n_long as usize));
    let r = cl.a.report(id).unwrap();
    assert_eq!(r.states_transferred, n_long);
}
