//! The cluster scenario (the poster's experiment) on small sizes: freeze-copy loses nothing
//! and reorders nothing; stop-copy loses packets; pre-copy reports its rounds; the same seed
//! gives the same result; invariants hold with a lossy transfer link.

use flowshift_migration::Algorithm;
use flowshift_sim::cluster::{self, ClusterConfig, ClusterRun};
use std::time::Duration;

fn small(algorithm: Algorithm, seed: u64) -> ClusterConfig {
    let mut c = ClusterConfig::poster(algorithm, seed);
    c.flows = 20;
    c.client_hosts = 4;
    c.fictive_states = 5_000;
    // smoltcp has no SACK and a 1 s minimum RTO: give each flow room for several segments.
    c.bottleneck_bps = 200_000_000;
    c.bottleneck_queue = 600_000;
    c.migrate_at = Duration::from_millis(500);
    c.duration = Duration::from_millis(1_300);
    c
}

fn run(c: &ClusterConfig) -> ClusterRun {
    let r = cluster::run(c, &mut |_| {}).expect("scenario runs");
    assert!(
        r.invariants.ok(),
        "invariants (seed {}): {:?}",
        c.seed,
        r.invariants
    );
    r
}

fn lost(r: &ClusterRun) -> u64 {
    let s = r
        .source
        .as_ref()
        .map_or(0, |s| s.packets_lost_by_cause.values().sum::<u64>());
    let d = r
        .destination
        .as_ref()
        .map_or(0, |d| d.packets_lost_by_cause.values().sum::<u64>());
    s + d
}

#[test]
fn freeze_copy_moves_everything_without_loss_or_reordering() {
    let r = run(&small(Algorithm::FreezeCopy, 1));
    let src = r.source.as_ref().expect("source report");
    assert!(
        src.completed,
        "migration did not complete: {:?}",
        src.phases
    );
    assert_eq!(lost(&r), 0, "packets lost because of the migration");
    assert_eq!(r.reordered_packets, 0, "packets reordered");
    assert!(
        src.states_transferred >= 5_000 / 2,
        "fictive states moved: {}",
        src.states_transferred
    );
    assert!(
        r.goodput_before_mbps > 100.0,
        "link not loaded before: {} drops {:?}",
        r.goodput_before_mbps,
        r.drops_by_cause
    );
}

#[test]
fn stop_copy_loses_packets() {
    let r = run(&small(Algorithm::StopCopy, 1));
    let src = r.source.as_ref().expect("source report");
    assert!(src.completed);
    assert!(lost(&r) > 0, "stop-and-copy dropped nothing");
    assert!(src.halted_ms > 0.0);
}

#[test]
fn pre_copy_reports_rounds() {
    let r = run(&small(Algorithm::PreCopy, 1));
    let src = r.source.as_ref().expect("source report");
    assert!(src.completed);
    assert!(
        src.precopy_rounds.len() >= 2,
        "rounds: {:?}",
        src.precopy_rounds
    );
    assert!(
        src.precopy_rounds.iter().skip(1).any(|r| r.dirty > 0),
        "active flows are dirty between rounds"
    );
}

#[test]
fn same_seed_same_result() {
    let a = serde_json::to_string(&run(&small(Algorithm::FreezeCopy, 7))).unwrap();
    let b = serde_json::to_string(&run(&small(Algorithm::FreezeCopy, 7))).unwrap();
    assert_eq!(a, b);
}

#[test]
fn invariants_hold_across_seeds_with_a_lossy_transfer_link() {
    let mut retransmissions = 0;
    for seed in 0..12 {
        for algorithm in [
            Algorithm::FreezeCopy,
            Algorithm::StopCopy,
            Algorithm::PreCopy,
        ] {
            let mut c = small(algorithm, 1000 + seed);
            c.fictive_states = 2_000;
            c.transfer_loss = 0.05;
            c.duration = std::time::Duration::from_millis(1_000);
            let r = run(&c);
            let src = r.source.as_ref().expect("source report");
            assert!(
                src.completed,
                "seed {}: {:?} did not complete: {:?}",
                c.seed, algorithm, src.phases
            );
            retransmissions += src.channel.retransmissions;
            if algorithm == Algorithm::FreezeCopy {
                assert_eq!(lost(&r), 0, "seed {}: freeze-copy lost packets", c.seed);
                assert_eq!(
                    r.reordered_packets, 0,
                    "seed {}: freeze-copy reordered packets",
                    c.seed
                );
            }
        }
    }
    assert!(
        retransmissions > 0,
        "the lossy link never made the protocol retransmit"
    );
}

#[test]
fn a_broken_transfer_channel_never_leaves_a_mapping_on_both_instances() {
    // Cut during the idle phase (nothing moved yet: revert) and during freeze-and-copy.
    // The last case runs long enough for the retransmissions to give up (about 3 s).
    for (cut_after_ms, seed, run_ms) in [(50u64, 3u64, 1_300u64), (201, 4, 1_300), (202, 5, 5_000)]
    {
        let mut c = small(Algorithm::FreezeCopy, seed);
        c.transfer_down_at = Some(c.migrate_at + std::time::Duration::from_millis(cut_after_ms));
        c.duration = std::time::Duration::from_millis(run_ms);
        // `run` asserts the ledger, both NATs' invariants and single ownership.
        let r = run(&c);
        let src = r.source.as_ref().expect("source report");
        assert!(
            !src.completed,
            "cut at +{cut_after_ms} ms: the migration cannot complete without its channel"
        );
    }
}
