//! The harness itself: the switch follows the controller's rules, requests go through the
//! orchestrator, runs are deterministic.

mod common;

use common::*;
use core::time::Duration;
use flowshift_control::orchestrator::{ControlError, Stage};
use flowshift_harness::{Faults, HarnessError};
use flowshift_migration::{Algorithm, Params};
use std::net::Ipv4Addr;

fn params() -> Params {
    Params {
        batch_size: 16,
        idle_max: Duration::ZERO,
        drain: Duration::from_millis(2),
        ..Params::default()
    }
}

#[test]
fn the_switch_steers_by_the_rules_and_follows_the_redirect() {
    let mut cl = cluster(3);
    for f in 0..20 {
        assert!(cl.inject(out_pkt(f, 0)));
    }
    let port = cl.port_of(0).expect("flow 0 translated");
    assert_eq!(cl.steer(&out_pkt(0, 1)), Some(A));
    assert_eq!(cl.steer(&in_pkt(port, 0, 1)), Some(A));
    // B's own group goes to B; a packet of no group goes nowhere and is counted.
    assert_eq!(
        cl.steer(&udp([100, 64, 16, 9], 1000, SERVER, 53, 0, 0)),
        Some(B)
    );
    assert!(!cl.inject(udp(SERVER, 53, [203, 0, 113, 11], 53, 0, 0)));
    assert_eq!(cl.stats().unsteered, 1);
    let id = cl.start(Algorithm::FreezeCopy, params());
    assert_eq!(cl.orchestrator().migrations()[0].stage, Stage::Running);
    cl.advance_by(Duration::from_secs(2)).unwrap();
    assert!(cl.completed(id, A) && cl.completed(id, B));
    assert_eq!(cl.orchestrator().migrations()[0].stage, Stage::Done);
    assert_eq!(cl.steer(&out_pkt(0, 2)), Some(B));
    assert_eq!(cl.steer(&in_pkt(port, 0, 2)), Some(B));
    assert_eq!(cl.orchestrator().owner_of(Ipv4Addr::from(EXT0)), Some(B));
    assert!(mappings(cl.a.nat(), EXT0).is_empty());
    assert_eq!(mappings(cl.b.nat(), EXT0).len(), 20);
    assert_eq!(cl.stats().commands_refused, 0);
}

#[test]
fn refused_requests_are_errors() {
    let mut cl = cluster(4);
    let ext0 = Ipv4Addr::from(EXT0);
    assert!(matches!(
        cl.migrate(ext0, A, Algorithm::StopCopy, params()),
        Err(HarnessError::Control(ControlError::AlreadyThere(..)))
    ));
    assert!(matches!(
        cl.migrate(
            Ipv4Addr::new(198, 18, 9, 9),
            B,
            Algorithm::StopCopy,
            params()
        ),
        Err(HarnessError::Control(ControlError::UnknownGroup(_)))
    ));
    cl.start(Algorithm::StopCopy, params());
    assert!(matches!(
        cl.migrate(ext0, B, Algorithm::StopCopy, params()),
        Err(HarnessError::Control(ControlError::Busy(_)))
    ));
}

#[test]
fn same_seed_same_run_with_faults() {
    let run = |seed: u64| {
        let mut cl = cluster(seed);
        cl.cfg.faults = Faults {
            loss: 0.2,
            dup: 0.2,
            jitter: Duration::from_micros(300),
            cut_at: None,
        };
        for f in 0..200 {
            cl.inject(out_pkt(f, 0));
        }
        let id = cl.start(Algorithm::PreCopy, params());
        cl.advance_by(Duration::from_secs(5)).unwrap();
        assert!(
            cl.completed(id, A),
            "pre-copy did not complete under faults"
        );
        let st = cl.stats().clone();
        assert!(st.frames_lost > 0 && st.frames_duplicated > 0, "{st:?}");
        (format!("{:?}", cl.obs.events), cl.obs.frames, st)
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9).0, run(10).0);
}

#[test]
fn a_slow_transfer_link_takes_longer() {
    let took = |ns_per_byte: f64| {
        let mut cl = cluster(5);
        cl.cfg.transfer_ns_per_byte = ns_per_byte;
        for f in 0..100 {
            cl.inject(out_pkt(f, 0));
        }
        let t0 = cl.now;
        let id = cl.start(Algorithm::StopCopy, params());
        assert!(cl.advance_until(t0 + Duration::from_secs(10), |ev| {
            ev.iter().any(|(_, e)| {
                matches!(e, flowshift_migration::MigrationEvent::Completed { migration, .. } if *migration == id)
            })
        }));
        cl.now - t0
    };
    // 100 records of 24 bytes at 1 Mbit/s: about 19 ms more than without a rate limit.
    let (fast, slow) = (took(0.0), took(8_000.0));
    assert!(
        slow > fast + Duration::from_millis(15),
        "{fast:?} vs {slow:?}"
    );
}

#[test]
fn instances_must_be_a_and_b() {
    let inst = |id| {
        let nat = flowshift_nat::Nat::new(nat_config(vec![group(EXT2, [100, 64, 16, 0], 24)], 1));
        flowshift_migration::Instance::new(id, nat.unwrap(), mig_config()).unwrap()
    };
    let r = Harness::new(
        inst(B),
        inst(A),
        flowshift_wire::Instant::ZERO,
        HarnessConfig::default(),
        (),
    );
    assert!(matches!(r, Err(HarnessError::Ids(..))));
}
