//! Figures at the poster's scale (about 60,000 states). Ignored by default (slow in debug
//! builds): `cargo test -p flowshift-harness --release --test scale -- --ignored --nocapture`.
//! The transfer link here has a delay (0.5 ms each way) but no bandwidth limit, so durations are
//! round-trip bound; the simulator adds link rates.

mod common;

use common::*;
use core::time::Duration;
use flowshift_migration::{Algorithm, MigrationConfig, Params};
use flowshift_nat::Nat;
use std::net::Ipv4Addr;

fn run(algorithm: Algorithm) {
    // Full port range, 512-port blocks: 126 blocks; 118 subscribers x 508 UDP mappings.
    let wide = |groups| flowshift_nat::NatConfig {
        groups,
        block_size: 512,
        ..flowshift_nat::NatConfig::default()
    };
    let a = flowshift_migration::Instance::new(
        A,
        Nat::new(wide(vec![group(EXT0, [100, 64, 0, 0], 22)])).unwrap(),
        MigrationConfig::default(),
    )
    .unwrap();
    let b = flowshift_migration::Instance::new(
        B,
        Nat::new(wide(vec![group(EXT2, [100, 64, 16, 0], 24)])).unwrap(),
        MigrationConfig::default(),
    )
    .unwrap();
    let mut cl = cluster_of(1, a, b);
    let (subs, per) = (118u32, 508u16);
    for s in 0..subs {
        let host = [100, 64, ((1 + s) >> 8) as u8, (1 + s) as u8];
        for p in 0..per {
            cl.inject(udp(host, 20_000 + p, SERVER, 53, s, p as u32));
        }
    }
    let g = cl.a.nat().group_id(Ipv4Addr::from(EXT0)).unwrap();
    let n = cl.a.nat().group_stats(g).unwrap().mappings;
    let params = Params {
        batch_size: 512,
        batch_max_bytes: 64 << 10,
        batches_in_flight: if algorithm == Algorithm::FreezeCopy {
            1
        } else {
            8
        },
        idle_max: Duration::ZERO,
        drain: Duration::from_millis(2),
        ..Params::default()
    };
    let wall = std::time::Instant::now();
    let id = cl.start(algorithm, params);
    cl.advance_by(Duration::from_secs(60)).unwrap();
    let wall = wall.elapsed();
    let r = cl.a.report(id).unwrap();
    assert!(r.completed, "{algorithm:?} not completed");
    assert_eq!(r.states_transferred, n);
    let ready = r
        .phases
        .iter()
        .find(|p| p.name == flowshift_migration::Phase::AwaitCutover)
        .unwrap()
        .start_ms
        - r.phases[0].start_ms;
    println!(
        "{algorithm:?}: {n} states, {} batches, {} records, {} bytes sent ({:.1} B/state), \
         ready for cutover after {ready:.1} ms, max freeze {:.2} ms, halted {:.2} ms, \
         wall {wall:?}",
        r.batches,
        r.records,
        r.bytes_transferred,
        r.bytes_transferred as f64 / n as f64,
        r.max_freeze_ms,
        r.halted_ms,
    );
}

#[test]
#[ignore]
fn poster_scale_figures() {
    run(Algorithm::FreezeCopy);
    run(Algorithm::StopCopy);
    run(Algorithm::PreCopy);
}
